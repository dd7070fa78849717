"""The released ConceptSeg-R1 checkpoint (``zhaoyuan666/ConceptSeg-R1-7B``) as it is laid out.

The official code saved it with transformers 4.51.3: one Hugging Face directory whose
``config.json`` names ``ConceptSegR1ForConditionalGeneration_qwen2p5`` (a Qwen2.5-VL
subclass) and adds ``num_of_query``; safetensors shards listed by
``model.safetensors.index.json`` hold the Qwen weights under 4.51's names (``model.*``,
``visual.*``, ``lm_head.*``) and, beside them, the translator's ``learnable_query.*``,
``connector.*`` and ``proj_to_sam.*`` tensors (method.md §1.1a). transformers 5 renames
the Qwen keys itself when it loads them and leaves the translator's, which are read here.
The processor files (tokenizer, preprocessor, chat template) may be missing: the processor
then comes from the base model the config names. No code from the checkpoint is run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from conceptseg.errors import ConceptSegError

TRANSLATOR_PREFIXES = ("learnable_query.", "connector.", "proj_to_sam.")
# The official run's completion budget (max_completion_length, method.md §7): long reasoning
# cut earlier loses its box and answer.
RELEASE_MAX_NEW_TOKENS = 2048
# When the config's base model is a path on the authors' disk, the processor is the
# Qwen2.5-VL-Instruct of the same size (the official training started from it).
QWEN_BASE_BY_HIDDEN_SIZE = {3584: "Qwen/Qwen2.5-VL-7B-Instruct", 2048: "Qwen/Qwen2.5-VL-3B-Instruct"}
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")  # whole string: fullmatch


class ReleaseError(ConceptSegError):
    """A released checkpoint is incomplete or inconsistent."""


def safetensors_files(path: str) -> list[str]:
    """The weight files of a Hugging Face directory: the index's shards, else every .safetensors."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))


def _keys(path: str) -> list[str]:
    from safetensors import safe_open

    keys = []
    for file in safetensors_files(path):
        with safe_open(file, framework="pt") as f:
            keys.extend(f.keys())
    return keys


def is_release(path: str) -> bool:
    """Whether ``path`` is a Hugging Face directory that also holds translator tensors."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        return False
    return any(k.startswith(TRANSLATOR_PREFIXES) for k in _keys(path))


def read_config(path: str) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def load_release_translator(path: str):
    """The translator tensors of a released checkpoint (shards opened lazily), checked
    against the config's ``num_of_query`` when it has one."""
    from safetensors import safe_open

    from conceptseg.model.translator import ConceptTranslator, config_from_state, load_translator_state

    state = {}
    for file in safetensors_files(path):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if key.startswith(TRANSLATOR_PREFIXES):
                    state[key] = f.get_tensor(key)
    translator = ConceptTranslator(config_from_state(state))
    queries = read_config(path).get("num_of_query")
    if queries is not None and queries != translator.config.num_queries:
        raise ReleaseError(
            f"{path}/config.json says num_of_query = {queries} but its learnable_query tensor holds "
            f"{translator.config.num_queries} queries; the checkpoint is inconsistent, download it again."
        )
    load_translator_state(translator, state)
    return translator


def has_processor(path: str) -> bool:
    """Whether a directory carries its own processor (preprocessor and tokenizer files)."""
    return (any(os.path.isfile(os.path.join(path, f)) for f in PROCESSOR_FILES)
            and os.path.isfile(os.path.join(path, "tokenizer_config.json")))


def processor_source(path: str) -> str:
    """Where the processor of the checkpoint in ``path`` comes from.

    The directory itself when it has processor files; otherwise the base model its config
    names (``_name_or_path``: a hub id, resolved from the local cache when offline, or an
    existing directory); a base that is a path on another machine gives way to the
    Qwen2.5-VL-Instruct of the same hidden size.
    """
    if has_processor(path):
        return path
    config = read_config(path)
    base = str(config.get("_name_or_path") or "")
    if os.path.isdir(base) and has_processor(base):
        return base
    if _HUB_ID.fullmatch(base) and ".." not in base:
        return base
    hidden = config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size")
    if hidden in QWEN_BASE_BY_HIDDEN_SIZE:
        return QWEN_BASE_BY_HIDDEN_SIZE[hidden]
    raise ReleaseError(
        f"{path} has no processor files (preprocessor_config.json, tokenizer files) and its config names no "
        f"base model to take them from (_name_or_path = {base!r}). Copy the processor files of the "
        "Qwen2.5-VL-Instruct model it was trained from into the directory."
    )


# Loading Qwen's processor parses a 7 MB tokenizer.json into a 151k-token vocabulary: about
# 1.5 s of CPU each time. A process that loads several bundles made from one base (each
# training stage, a saved concept applied again, the App server's runs) loads it once. The key
# is the files' bytes, so an edited tokenizer is read again. Shared between policies: nothing
# changes a processor after loading (Policy sets the tokenizer's padding side, the same for all).
_processors: dict[tuple, object] = {}
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _processor_key(source: str, token: str | None) -> tuple:
    if not os.path.isdir(source):
        return (source, token)  # a hub id: its files in the cache do not change under one revision
    h = hashlib.blake2b(digest_size=20)
    for name in sorted(os.listdir(source)):
        file = os.path.join(source, name)
        if os.path.isfile(file) and not name.endswith(_WEIGHTS):
            with open(file, "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return ("dir", h.hexdigest())


def load_processor(source: str, checkpoint: str, token: str | None = None):
    """The processor from ``source``; a clear error when it cannot be had (offline, not cached)."""
    from transformers import AutoProcessor

    key = _processor_key(source, token)
    if key in _processors:
        return _processors[key]
    try:
        _processors[key] = AutoProcessor.from_pretrained(source, token=token)
        return _processors[key]
    except (OSError, ValueError) as e:
        if source == checkpoint:
            raise
        raise ReleaseError(
            f"{checkpoint} has no processor files, so the processor comes from its base model {source!r}, "
            f"which could not be loaded ({type(e).__name__}: {e}). Download it once (`hf download {source}`) "
            f"or copy its tokenizer and preprocessor files into {checkpoint}."
        ) from e


def generation_max_new_tokens(path: str | None) -> int | None:
    """``max_new_tokens`` from a model directory's generation_config.json, if it sets one."""
    if not path or not os.path.isdir(path):
        return None
    file = os.path.join(path, "generation_config.json")
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        value = json.load(f).get("max_new_tokens")
    return int(value) if isinstance(value, int) and value > 0 else None
