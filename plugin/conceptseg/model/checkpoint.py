"""Bundles: everything the reasoning route needs, in one directory.

A bundle directory holds ``bundle.json`` and the files it names::

    bundle.json               {"format": "conceptseg-bundle", "version": 1, "policy": {...},
                               "translator": {...}, "segmenter": {...}}
    policy/                   a Hugging Face Qwen2.5-VL directory (or "path" names a hub id)
    adapter/                  optional peft LoRA adapter over that policy
    translator.safetensors    the concept translation module (config in its metadata)
    segmenter/sam2.safetensors  SAM 2 weights (or segmenter/, a Hugging Face SAM 3 directory)

The released ConceptSeg-R1-7B checkpoint is a plain Hugging Face directory whose
safetensors shards hold the policy and, as top-level tensors beside it, the translator
(``learnable_query.*``, ``connector.*``, ``proj_to_sam.*``); ``load_bundle`` recognises it
and pairs it with SAM 3 (``facebook/sam3``), the segmenter it was trained with.
Only safetensors are read: no pickle, no ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass

from conceptseg.errors import ConceptSegError
from conceptseg.model.hub import hf_token

BUNDLE_FILE = "bundle.json"
FORMAT = "conceptseg-bundle"


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
    policy_path: str | None = None  # resolved base policy directory or hub id
    adapter_path: str | None = None  # resolved LoRA adapter directory, if any
    prompt_template: object = None  # bundle.json "prompt_template": the wording it was trained with


@contextlib.contextmanager
def _reading(what: str, path: str):
    """Turns a loader's failure on a damaged file (truncated download, cut-off copy) into one sentence."""
    try:
        yield
    except ConceptSegError:
        raise
    except Exception as e:  # safetensors, torch and transformers raise many types for the same damage
        cause = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        if path is None or not os.path.exists(str(path)):  # a hub id: not a file of ours
            raise BundleError(f"Cannot load the {what} {path!r} ({cause}). Check the name, the network and, for "
                              "gated models, HF_TOKEN; or pass a local directory.") from e
        raise BundleError(
            f"Cannot read the {what} at {path} ({cause}). The file is probably truncated or damaged (an "
            "interrupted download or copy): download or copy it again, or rebuild the bundle."
        ) from e


def _require(path: str, what: str, how: str) -> str:
    if not os.path.exists(path):
        raise BundleError(f"Missing {what}: {path}. {how}")
    return path


def save_bundle(out_dir: str, policy_dir: str, translator, segmenter, adapter_dir: str | None = None,
                max_new_tokens: int | None = None, copy_segmenter: bool = True) -> str:
    """Writes bundle.json plus the translator and segmenter weights: a self-contained directory.

    A local ``policy_dir`` or ``adapter_dir`` outside ``out_dir`` is copied into it
    (``policy/``, ``adapter/``) and referenced by relative path: moving or deleting the input
    bundle does not break this one. A hub id stays a hub id. ``copy_segmenter=False``
    references the policy and the segmenter's own (absolute) files instead of copying them:
    training checkpoints use it, since the frozen parts would otherwise be rewritten every
    time. ``max_new_tokens`` None leaves the budget to the policy's generation_config.json
    or the official 2048.
    """
    from conceptseg.model.translator import save_translator

    os.makedirs(out_dir, exist_ok=True)
    if copy_segmenter:
        policy_dir = _bring_inside(policy_dir, out_dir, "policy")
        adapter_dir = _bring_inside(adapter_dir, out_dir, "adapter")
    save_translator(translator, os.path.join(out_dir, "translator.safetensors"))
    seg_config = segmenter.config.to_dict()
    seg_config["device"] = None  # where it runs is the loader's choice, not the bundle's
    if not copy_segmenter and (seg_config.get("checkpoint") or seg_config.get("path")):
        kind = "sam2" if hasattr(segmenter, "save_weights") else "sam3"
        for name in ("checkpoint", "path"):
            if seg_config.get(name) and os.path.exists(seg_config[name]):
                seg_config[name] = os.path.abspath(seg_config[name])
    elif hasattr(segmenter, "save_weights"):  # SAM 2: one safetensors file
        os.makedirs(os.path.join(out_dir, "segmenter"), exist_ok=True)
        kind = "sam2"
        segmenter.save_weights(os.path.join(out_dir, "segmenter", "sam2.safetensors"))
        seg_config["checkpoint"] = os.path.join("segmenter", "sam2.safetensors")
    else:  # SAM 3: a Hugging Face directory
        kind = "sam3"
        segmenter.save(os.path.join(out_dir, "segmenter"))
        seg_config["path"] = "segmenter"
    spec = {
        "format": FORMAT,
        "version": 1,
        "policy": {"path": _relative(policy_dir, out_dir), "adapter": _relative(adapter_dir, out_dir)},
        "translator": {"file": "translator.safetensors"},
        "segmenter": {"kind": kind, "config": seg_config},
    }
    if max_new_tokens is not None:
        spec["policy"]["max_new_tokens"] = max_new_tokens
    with open(os.path.join(out_dir, BUNDLE_FILE), "w") as f:
        json.dump(spec, f, indent=2)
    return out_dir


def _bring_inside(path: str | None, root: str, name: str) -> str | None:
    """A local directory outside ``root`` is copied to ``root/name``; anything else is returned as it is."""
    import shutil

    if path is None or not os.path.isdir(path):
        return path
    if not os.path.relpath(os.path.abspath(path), os.path.abspath(root)).startswith(".."):
        return path
    target = os.path.join(root, name)
    # Copies, not hard links: a later full fine-tune writing into one must not change the other.
    shutil.copytree(path, target, dirs_exist_ok=True)
    return target


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
    """Whether ``path`` is a released ConceptSeg-R1 checkpoint (see conceptseg.model.release)."""
    from conceptseg.model.release import is_release

    return is_release(path)


def load_official_translator(path: str):
    """The translator tensors of a released checkpoint (see conceptseg.model.release)."""
    from conceptseg.model.release import load_release_translator

    return load_release_translator(path)


def download(repo_id: str) -> str:
    """A local snapshot of a hub repository (with the token of ``conceptseg.model.hub``, if any)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, token=hf_token())
    except Exception as e:  # the hub client raises many types; the user needs one sentence
        raise BundleError(
            f"Cannot get {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "Check the name and your network, or pass a local directory."
        ) from e


OFFICIAL_SEGMENTER = "facebook/sam3"  # the segmenter ConceptSeg-R1-7B was trained with
LOCAL_SEGMENTER_DIR = "sam3"  # where the zoo puts SAM 3 beside a released checkpoint


def _segmenter_config(seg_spec: dict, root: str, device: str | None):
    """The segmenter config a bundle.json names, with paths made absolute and checked."""
    seg = dict(seg_spec["config"])
    seg["device"] = device or seg.get("device")
    if seg_spec.get("kind", "sam2") == "sam3":
        from conceptseg.segmenters.sam3 import Sam3SegmenterConfig

        seg["path"] = _resolve(seg["path"], root)
        return Sam3SegmenterConfig.from_dict(seg)
    from conceptseg.segmenters.sam2 import Sam2SegmenterConfig

    if seg.get("checkpoint"):
        seg["checkpoint"] = _require(
            os.path.join(root, seg["checkpoint"]), "segmenter weights",
            "Download SAM 2 weights from https://github.com/facebookresearch/sam2 and rebuild the bundle.",
        )
    return Sam2SegmenterConfig.from_dict(seg)


def _build_segmenter(config):
    """SAM 2 or SAM 3, by the type of its config."""
    if type(config).__name__ == "Sam3SegmenterConfig":
        from conceptseg.segmenters.sam3 import Sam3Segmenter

        return Sam3Segmenter.from_config(config)
    from conceptseg.segmenters.sam2 import Sam2Segmenter

    return Sam2Segmenter.from_config(config)


def load_bundle(path: str, device: str | None = None, segmenter_config=None):
    """Loads a bundle directory, a released ConceptSeg-R1 checkpoint, or a hub id of either.

    ``segmenter_config`` (a Sam2SegmenterConfig or Sam3SegmenterConfig) overrides the
    bundle's segmenter; a released checkpoint carries none of its own and gets SAM 3
    (``facebook/sam3`` from the Hub) unless one is given.
    """
    from conceptseg.model.policy import Policy, PolicyConfig
    from conceptseg.model.release import RELEASE_MAX_NEW_TOKENS, generation_max_new_tokens, processor_source
    from conceptseg.model.translator import load_translator

    if not os.path.isdir(path):
        path = download(path)
    spec_path = os.path.join(path, BUNDLE_FILE)
    if os.path.isfile(spec_path):
        with open(spec_path) as f:
            spec = json.load(f)
        if spec.get("format") != FORMAT:
            raise BundleError(f"{spec_path} is not a conceptseg bundle (format {spec.get('format')!r}).")
        policy_spec = spec.get("policy") or {}
        policy_path = _resolve(policy_spec.get("path"), path)
        adapter = _resolve(policy_spec.get("adapter"), path)
        translator = None
        if spec.get("translator"):
            translator_file = _require(
                os.path.join(path, spec["translator"]["file"]), "translator weights",
                "Rebuild the bundle (conceptseg tiny-bundle, or save_bundle after training).",
            )
            with _reading("translator weights", translator_file):
                translator = load_translator(translator_file, device=device or "cpu")
        if segmenter_config is None:
            segmenter_config = _segmenter_config(spec["segmenter"], path, device)
        # bundle.json's budget, else the policy's generation_config.json, else the official one
        max_new_tokens = (policy_spec.get("max_new_tokens") or generation_max_new_tokens(policy_path)
                          or RELEASE_MAX_NEW_TOKENS)
        processor_path = None
    elif is_official_checkpoint(path):
        spec = {"format": "conceptseg-r1-official", "policy": {"path": path}}
        policy_path, adapter = path, None
        max_new_tokens = generation_max_new_tokens(path) or RELEASE_MAX_NEW_TOKENS
        processor_path = processor_source(path)
        with _reading("checkpoint's translator tensors", path):
            translator = load_official_translator(path)
        if segmenter_config is None:  # the released model's backbone: the zoo's copy, else the Hub
            from conceptseg.segmenters.sam3 import Sam3SegmenterConfig

            local = os.path.join(path, LOCAL_SEGMENTER_DIR)
            source = local if os.path.isfile(os.path.join(local, "config.json")) else OFFICIAL_SEGMENTER
            segmenter_config = Sam3SegmenterConfig(path=source, device=device)
    else:
        raise BundleError(
            f"{path} holds neither {BUNDLE_FILE} nor a ConceptSeg-R1 checkpoint. Build one with "
            "`conceptseg tiny-bundle DIR` or save one with conceptseg.model.checkpoint.save_bundle."
        )
    with _reading("segmenter weights", getattr(segmenter_config, "checkpoint", None) or getattr(segmenter_config, "path", path)):
        segmenter = _build_segmenter(segmenter_config)
    if policy_path is None:  # a segmenter-only bundle: the SAM 2 routes, no reasoning
        return Bundle(policy=None, translator=None, segmenter=segmenter, spec=spec, path=path)
    with _reading("policy", policy_path):
        policy = Policy.from_pretrained(policy_path, adapter=adapter, processor_path=processor_path,
                                        config=PolicyConfig(max_new_tokens=max_new_tokens, device=device))
    template = None
    if spec.get("prompt_template"):
        from conceptseg.model.templates import load_prompt_template

        template = load_prompt_template(_resolve(spec["prompt_template"], path))
    return Bundle(policy=policy, translator=translator.to(policy.device).eval(), segmenter=segmenter, spec=spec,
                  path=path, policy_path=policy_path, adapter_path=adapter, prompt_template=template)


def load_policy(path: str, device: str | None = None):
    """The policy alone of a bundle or released checkpoint (no translator, no segmenter)."""
    from conceptseg.model.policy import Policy, PolicyConfig
    from conceptseg.model.release import processor_source

    if not os.path.isdir(path):
        path = download(path)
    spec_path = os.path.join(path, BUNDLE_FILE)
    if os.path.isfile(spec_path):
        with open(spec_path) as f:
            policy_spec = json.load(f).get("policy") or {}
        if not policy_spec.get("path"):
            raise BundleError(f"{path} has no policy.")
        policy_path, adapter, processor = _resolve(policy_spec["path"], path), _resolve(policy_spec.get("adapter"), path), None
    else:
        policy_path, adapter, processor = path, None, processor_source(path)
    return Policy.from_pretrained(policy_path, adapter=adapter, processor_path=processor, config=PolicyConfig(device=device))


def load_bundle_cached(path: str, device: str | None = None):
    """``load_bundle`` once per process: operators run again and again in one worker."""
    return _load_bundle_once(path, device)  # one cache key however device is passed


@functools.lru_cache(maxsize=2)
def _load_bundle_once(path: str, device: str | None):
    return load_bundle(path, device=device)
