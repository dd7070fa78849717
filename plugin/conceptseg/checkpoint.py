"""Bundles: everything the reasoning route needs, in one directory.

A bundle directory holds ``bundle.json`` and the files it names::

    bundle.json               {"format": "conceptseg-bundle", "version": 1, "policy": {...},
                               "translator": {...}, "segmenter": {...}}
    policy/                   a Hugging Face Qwen2.5-VL directory (or "path" names a hub id)
    adapter/                  optional peft LoRA adapter over that policy
    translator.safetensors    the concept translation module (config in its metadata)
    segmenter/sam2.safetensors  the segmenter's weights

The released ConceptSeg-R1-7B checkpoint is a plain Hugging Face directory whose
safetensors shards hold the policy and, as top-level tensors beside it, the translator
(``learnable_query.*``, ``connector.*``, ``proj_to_sam.*``); ``load_bundle`` recognises it.
Only safetensors are read: no pickle, no ``trust_remote_code``.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

from conceptseg.errors import ConceptSegError

BUNDLE_FILE = "bundle.json"
FORMAT = "conceptseg-bundle"
# The released checkpoint stores the translator as top-level tensors with these prefixes.
_TRANSLATOR_PREFIXES = ("learnable_query.", "connector.", "proj_to_sam.")


class BundleError(ConceptSegError):
    """A bundle is missing a file or cannot be read."""


@dataclass
class Bundle:
    """A loaded policy, translator and segmenter, and the spec they came from."""

    policy: object
    translator: object
    segmenter: object
    spec: dict
    path: str


def _require(path: str, what: str, how: str) -> str:
    if not os.path.exists(path):
        raise BundleError(f"Missing {what}: {path}. {how}")
    return path


def save_bundle(out_dir: str, policy_dir: str, translator, segmenter, adapter_dir: str | None = None, max_new_tokens: int = 512) -> str:
    """Writes bundle.json plus the translator and segmenter weights; the policy is referenced.

    ``policy_dir`` and ``adapter_dir`` are stored relative to ``out_dir`` when inside it,
    else as given (a hub id or an absolute path).
    """
    from conceptseg.translator import save_translator

    os.makedirs(os.path.join(out_dir, "segmenter"), exist_ok=True)
    save_translator(translator, os.path.join(out_dir, "translator.safetensors"))
    segmenter.save_weights(os.path.join(out_dir, "segmenter", "sam2.safetensors"))
    seg_config = segmenter.config.to_dict()
    seg_config["checkpoint"] = os.path.join("segmenter", "sam2.safetensors")
    spec = {
        "format": FORMAT,
        "version": 1,
        "policy": {"path": _relative(policy_dir, out_dir), "adapter": _relative(adapter_dir, out_dir), "max_new_tokens": max_new_tokens},
        "translator": {"file": "translator.safetensors"},
        "segmenter": {"kind": "sam2", "config": seg_config},
    }
    with open(os.path.join(out_dir, BUNDLE_FILE), "w") as f:
        json.dump(spec, f, indent=2)
    return out_dir


def _relative(path: str | None, root: str) -> str | None:
    if path is None or not os.path.exists(path):
        return path
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return path if rel.startswith("..") else rel


def _resolve(value: str | None, root: str) -> str | None:
    if value is None:
        return None
    local = os.path.join(root, value)
    return local if os.path.exists(local) else value


def is_official_checkpoint(path: str) -> bool:
    """Whether ``path`` is a Hugging Face directory that also holds translator tensors."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        return False
    return any(k.startswith(_TRANSLATOR_PREFIXES) for k in _safetensors_keys(path))


def _safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))


def _safetensors_keys(path: str) -> list[str]:
    from safetensors import safe_open

    keys = []
    for file in _safetensors_files(path):
        with safe_open(file, framework="pt") as f:
            keys.extend(f.keys())
    return keys


def load_official_translator(path: str):
    """Reads only the translator tensors of a released checkpoint (shards opened lazily)."""
    from safetensors import safe_open

    from conceptseg.translator import PREFIXES, ConceptTranslator, config_from_state, load_translator_state

    state = {}
    for file in _safetensors_files(path):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if key.startswith(PREFIXES):
                    state[key] = f.get_tensor(key)
    translator = ConceptTranslator(config_from_state(state))
    load_translator_state(translator, state)
    return translator


def download(repo_id: str) -> str:
    """A local snapshot of a hub repository (uses HF_TOKEN from the environment if set)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id)
    except Exception as e:  # the hub client raises many types; the user needs one sentence
        raise BundleError(
            f"Cannot get {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "Check the name and your network, or pass a local directory."
        ) from e


def load_bundle(path: str, device: str | None = None, segmenter_config=None):
    """Loads a bundle directory, a released ConceptSeg-R1 checkpoint, or a hub id of either.

    ``segmenter_config`` (a Sam2SegmenterConfig) overrides the bundle's segmenter; a
    released checkpoint carries none of its own and needs it.
    """
    from conceptseg.policy import Policy, PolicyConfig
    from conceptseg.segmenters.sam2 import Sam2Segmenter, Sam2SegmenterConfig
    from conceptseg.translator import load_translator

    if not os.path.isdir(path):
        path = download(path)
    spec_path = os.path.join(path, BUNDLE_FILE)
    if os.path.isfile(spec_path):
        with open(spec_path) as f:
            spec = json.load(f)
        if spec.get("format") != FORMAT:
            raise BundleError(f"{spec_path} is not a conceptseg bundle (format {spec.get('format')!r}).")
        policy_path = _resolve(spec["policy"]["path"], path)
        adapter = _resolve(spec["policy"].get("adapter"), path)
        translator_file = _require(
            os.path.join(path, spec["translator"]["file"]), "translator weights",
            "Rebuild the bundle (conceptseg tiny-bundle, or save_bundle after training).",
        )
        translator = load_translator(translator_file, device=device or "cpu")
        if segmenter_config is None:
            seg = dict(spec["segmenter"]["config"])
            if seg.get("checkpoint"):
                seg["checkpoint"] = _require(
                    os.path.join(path, seg["checkpoint"]), "segmenter weights",
                    "Download SAM 2 weights from https://github.com/facebookresearch/sam2 and rebuild the bundle.",
                )
            segmenter_config = Sam2SegmenterConfig.from_dict({**seg, "device": device or seg.get("device")})
        max_new_tokens = spec["policy"].get("max_new_tokens", 512)
    elif is_official_checkpoint(path):
        spec = {"format": "conceptseg-r1-official", "policy": {"path": path}}
        policy_path, adapter, max_new_tokens = path, None, 512
        translator = load_official_translator(path)
        if segmenter_config is None:
            raise BundleError(
                f"{path} is a released ConceptSeg-R1 checkpoint: it pairs with SAM 3, which it does "
                "not contain. Pass a SAM 2 segmenter config (segmenter_config=...) to use it with SAM 2."
            )
    else:
        raise BundleError(
            f"{path} holds neither {BUNDLE_FILE} nor a ConceptSeg-R1 checkpoint. Build one with "
            "`conceptseg tiny-bundle DIR` or save one with conceptseg.checkpoint.save_bundle."
        )
    policy = Policy.from_pretrained(policy_path, adapter=adapter, config=PolicyConfig(max_new_tokens=max_new_tokens, device=device))
    segmenter = Sam2Segmenter.from_config(segmenter_config)
    return Bundle(policy=policy, translator=translator.to(policy.device).eval(), segmenter=segmenter, spec=spec, path=path)


@functools.lru_cache(maxsize=2)
def load_bundle_cached(path: str, device: str | None = None):
    """``load_bundle`` once per process: operators run again and again in one worker."""
    return load_bundle(path, device=device)
