"""The zoo's models: how each is fetched into its directory under FiftyOne's model zoo.

``conceptseg-r1-7b`` gets everything it needs there, so it then loads with the network
off (``HF_HUB_OFFLINE=1``): the released checkpoint, SAM 3 (gated ``facebook/sam3``) in
its ``sam3/`` folder, and, when the release has no processor files, those of the base
model its config names. The Hugging Face token comes from ``HF_TOKEN`` (the environment,
or a FiftyOne secret of that name, which FiftyOne puts in the environment of operators);
it is never logged. A missing or refused token gives one message saying what to do.
"""

from __future__ import annotations

import json
import os

from conceptseg.model.hub import hf_token
from conceptseg.model.checkpoint import BUNDLE_FILE, FORMAT, LOCAL_SEGMENTER_DIR, OFFICIAL_SEGMENTER, BundleError

ZOO = {
    "conceptseg-r1-7b": {"repo": "zhaoyuan666/ConceptSeg-R1-7B", "segmenter": OFFICIAL_SEGMENTER,
                         "gpu": True, "disk_gb": 22,
                         "needs": "a CUDA GPU with about 24 GB of memory (bf16), about 18 GB of disk for the "
                                  "checkpoint and 3.5 GB for SAM 3, and access to the gated facebook/sam3 on "
                                  "Hugging Face (accept its licence, then set HF_TOKEN)"},
    "conceptseg-sam2-hiera-large": {
        "repo": "facebook/sam2.1-hiera-large",
        "file": "sam2.1_hiera_large.pt",
        "config": "configs/sam2.1/sam2.1_hiera_l.yaml",
    },
    # SAM 3 alone (a segmenter-only bundle): the exemplar route, no reasoning policy.
    "conceptseg-sam3": {"repo": OFFICIAL_SEGMENTER, "sam3_only": True},
    "conceptseg-tiny-random": {"tiny": True},
}
# Processor files only: a base model's weights are not needed beside a release.
PROCESSOR_PATTERNS = ["tokenizer*", "vocab.json", "merges.txt", "preprocessor_config.json", "processor_config.json",
                      "chat_template.json", "chat_template.jinja", "video_preprocessor_config.json"]
GATED_HELP = (
    "{repo} is gated: request access on https://huggingface.co/{repo} (accept its licence), then set "
    "HF_TOKEN to a token of that account, as a FiftyOne secret or in the environment."
)


class GatedModelError(BundleError):
    """A gated Hugging Face model was refused: no token, or no access granted to it."""


def is_downloaded(path: str) -> bool:
    """Whether a zoo model directory is complete (a bundle, or a release with its SAM 3)."""
    if os.path.isfile(os.path.join(path, BUNDLE_FILE)):
        return True
    segmenter = os.path.join(path, LOCAL_SEGMENTER_DIR, "config.json")
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(segmenter)


def download_zoo_bundle(name: str, path: str) -> str:
    """Fetches a zoo entry into ``path`` once; a failed download leaves no partial directory.

    Files go to a temporary sibling directory first and are moved into place at the end.
    """
    import shutil
    import tempfile

    if name not in ZOO:
        raise BundleError(f"Unknown ConceptSeg zoo model {name!r}; known: {', '.join(ZOO)}.")
    if is_downloaded(path):
        return path
    entry = ZOO[name]
    if "segmenter" in entry and os.path.isfile(os.path.join(path, "config.json")):
        _complete_release(entry, path)  # an earlier download that predates SAM 3 in the zoo dir
        return path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    check_requirements(name, parent)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=parent)
    try:
        if entry.get("tiny"):
            from conceptseg.testing import build_tiny_bundle

            build_tiny_bundle(tmp)
        elif "file" in entry:
            _download_sam2(entry, tmp)
        elif entry.get("sam3_only"):
            _download_sam3(entry, tmp)
        else:
            _download_release(entry, tmp)
        if os.path.isdir(path):
            shutil.rmtree(path)  # an incomplete earlier attempt (is_downloaded was False)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


ANYWAY = "CONCEPTSEG_DOWNLOAD_ANYWAY"  # set to 1 to download a GPU model on a machine without one


def check_requirements(name: str, parent: str) -> None:
    """Refuses, before a byte is downloaded, a zoo model this machine cannot run or store."""
    import shutil

    entry = ZOO.get(name, {})
    if not entry.get("needs") or os.environ.get(ANYWAY) == "1":
        return
    free_gb = shutil.disk_usage(parent).free / 1e9
    problems = []
    if free_gb < entry.get("disk_gb", 0):
        problems.append(f"{parent} has {free_gb:.0f} GB free")
    if entry.get("gpu"):
        import torch

        if not torch.cuda.is_available():
            problems.append("this machine has no CUDA GPU")
    if problems:
        raise BundleError(
            f"{name} needs {entry['needs']}; not downloading: {' and '.join(problems)}. Use it on a machine "
            f"with a GPU, or set {ANYWAY}=1 to download it anyway (on a CPU it would take minutes per image)."
        )


def _download_release(entry: dict, out_dir: str) -> None:
    """The released checkpoint, SAM 3 beside it, and the base's processor files if it lacks them."""
    from conceptseg.model.release import has_processor, processor_source

    _snapshot(entry["repo"], out_dir)
    _snapshot(entry["segmenter"], os.path.join(out_dir, LOCAL_SEGMENTER_DIR))
    if not has_processor(out_dir):
        _snapshot(processor_source(out_dir), out_dir, allow_patterns=PROCESSOR_PATTERNS)


def _complete_release(entry: dict, path: str) -> None:
    """Adds SAM 3 (and processor files) to a release downloaded without them, keeping the rest."""
    import shutil
    import tempfile

    from conceptseg.model.release import has_processor, processor_source

    tmp = tempfile.mkdtemp(prefix=".sam3-", dir=path)
    try:
        _snapshot(entry["segmenter"], tmp)
        os.replace(tmp, os.path.join(path, LOCAL_SEGMENTER_DIR))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not has_processor(path):
        _snapshot(processor_source(path), path, allow_patterns=PROCESSOR_PATTERNS)


def _snapshot(repo: str, out_dir: str, allow_patterns=None) -> None:
    """``snapshot_download`` into ``out_dir``, with HF_TOKEN and HF_ENDPOINT read now."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    token = hf_token() or os.environ.get("HF_TOKEN") or None
    try:
        snapshot_download(repo, local_dir=out_dir, token=token, allow_patterns=allow_patterns,
                          endpoint=os.environ.get("HF_ENDPOINT") or None)
    except (GatedRepoError, RepositoryNotFoundError) as e:
        # A gated repository answers 401/403 without a token or access; the hub reports some
        # of these as "not found", so both read as a refusal here.
        raise GatedModelError(GATED_HELP.format(repo=repo) + f" ({type(e).__name__})") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise GatedModelError(GATED_HELP.format(repo=repo) + f" (HTTP {status})") from e
        raise BundleError(f"Could not download {repo!r} from the Hugging Face Hub: {type(e).__name__}: {e}") from e
    except Exception as e:  # the hub client raises many types; the user needs one sentence
        raise BundleError(f"Could not download {repo!r} from the Hugging Face Hub: {type(e).__name__}: {e}") from e


def _download_sam3(entry: dict, out_dir: str) -> None:
    """SAM 3 (gated) in ``segmenter/`` and a bundle.json naming it: no policy, no translator."""
    _snapshot(entry["repo"], os.path.join(out_dir, "segmenter"))
    spec = {"format": FORMAT, "version": 1, "policy": None, "translator": None,
            "segmenter": {"kind": "sam3", "config": {"path": "segmenter"}}}
    with open(os.path.join(out_dir, BUNDLE_FILE), "w") as f:
        json.dump(spec, f, indent=2)


def _download_sam2(entry: dict, out_dir: str) -> None:
    """Meta's .pt becomes safetensors once, here (read with weights_only: tensors, no code)."""
    import torch
    from safetensors.torch import save_file

    try:
        from huggingface_hub import hf_hub_download

        pt = hf_hub_download(entry["repo"], entry["file"], local_dir=out_dir, token=hf_token() or os.environ.get("HF_TOKEN"),
                             endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as e:
        raise BundleError(f"Could not download {entry['repo']}/{entry['file']}: {type(e).__name__}: {e}") from e
    state = torch.load(pt, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    os.makedirs(os.path.join(out_dir, "segmenter"), exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_dir, "segmenter", "sam2.safetensors"))
    os.remove(pt)
    spec = {
        "format": FORMAT,
        "version": 1,
        "policy": None,
        "translator": None,
        "segmenter": {"kind": "sam2", "config": {"config_name": entry["config"],
                                                 "checkpoint": os.path.join("segmenter", "sam2.safetensors")}},
    }
    with open(os.path.join(out_dir, BUNDLE_FILE), "w") as f:
        json.dump(spec, f, indent=2)
