"""Where training checkpoints live and which is newest: no torch, so App forms can ask too."""

from __future__ import annotations

import os
import shutil

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"  # written last: a checkpoint without it is incomplete


def checkpoint_dir(out_dir: str, step: int) -> str:
    """``OUT/checkpoints/step-NNNNNN``: zero-padded so names sort by step."""
    return os.path.join(out_dir, CHECKPOINTS, f"step-{step:06d}")


def checkpoint_step(path: str) -> int:
    """The step a checkpoint directory was saved at."""
    return int(os.path.basename(path).split("-")[-1])


def latest_checkpoint(out_dir: str) -> str | None:
    """The newest complete checkpoint directory under ``out_dir``, or None."""
    root = os.path.join(out_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return None
    done = [d for d in os.listdir(root) if d.startswith("step-") and os.path.isfile(os.path.join(root, d, STATE_FILE))]
    return os.path.join(root, max(done)) if done else None


def prune(out_dir: str, keep: int) -> None:
    """Deletes all but the newest ``keep`` checkpoints."""
    root = os.path.join(out_dir, CHECKPOINTS)
    done = sorted(d for d in os.listdir(root) if d.startswith("step-"))
    for old in done[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
