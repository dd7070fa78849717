"""The released ConceptSeg-R1-7B layout, written from a tiny policy, and a stand-in Hugging Face hub cache."""

from __future__ import annotations

import json
import os

from conceptseg.testing.tiny import qwen_tokenizer_dir


TINY_BASE_ID = "conceptseg-tests/tiny-qwen2.5-vl"  # the base model id a tiny release names


RELEASE_ARCHITECTURE = "ConceptSegR1ForConditionalGeneration_qwen2p5"


def _release_key(key: str) -> str:
    """transformers 5 names → transformers 4.51's (model.language_model.* → model.*, model.visual.* → visual.*)."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key


def _release_config(config: dict, num_queries: int, base_model: str) -> dict:
    """A Qwen2.5-VL config.json → the flat form 4.51.3 wrote for the release. From transformers
    4.52 on the language model's keys are nested (``text_config``), from 5 on with ``rope_parameters``."""
    flat = "text_config" not in config  # saved by a transformers before 4.52
    text = dict(config if flat else config["text_config"])
    rope = text.pop("rope_parameters", None) or {"rope_theta": text["rope_theta"],
                                                 "mrope_section": text["rope_scaling"]["mrope_section"]}
    for key in ("model_type", "layer_types", "dtype", "rope_theta", "rope_scaling", "vision_config", "architectures",
                "_name_or_path", "transformers_version", "torch_dtype"):
        text.pop(key, None)
    vision = dict(config["vision_config"])
    vision.pop("rope_parameters", None)
    vision["model_type"] = "qwen2_5_vl"
    vision["in_chans"] = vision.pop("in_channels", vision.get("in_chans", 3))
    vision["spatial_patch_size"] = vision["patch_size"]
    out = {
        "_name_or_path": base_model,
        "architectures": [RELEASE_ARCHITECTURE],
        "model_type": "qwen2_5_vl",
        **text,
        "rope_theta": rope["rope_theta"],
        # 4.51 rewrote "mrope" to "default" and saved both keys
        "rope_scaling": {"type": "default", "mrope_section": rope["mrope_section"], "rope_type": "default"},
        "vision_config": vision,
        "torch_dtype": config.get("dtype") or config.get("torch_dtype") or "float32",
        "transformers_version": "4.51.3",
        "num_of_query": num_queries,
        "if_use_qwen_connector": False,
    }
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                "tie_word_embeddings"):
        out[key] = config[key]
    out["vision_token_id"] = out["vision_start_token_id"] + 2
    return out


def _write_release_processor(out_dir: str, policy_dir: str) -> None:
    """The processor files as 4.51 saved them: tokenizer files, preprocessor_config.json and
    chat_template.json (read from the tiny policy's own, transformers 5, processor)."""
    import shutil

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(policy_dir)
    image = processor.image_processor
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(qwen_tokenizer_dir(), name), os.path.join(out_dir, name))
    size = image.size if isinstance(image.size, dict) else {"shortest_edge": image.size.shortest_edge,
                                                              "longest_edge": image.size.longest_edge}
    preprocessor = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": list(image.image_mean), "image_std": list(image.image_std),
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
        "min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"],
        "merge_size": image.merge_size, "patch_size": image.patch_size, "resample": 3,
        "rescale_factor": 1 / 255, "temporal_patch_size": image.temporal_patch_size,
    }
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor, f, indent=2)
    with open(os.path.join(out_dir, "chat_template.json"), "w") as f:
        json.dump({"chat_template": processor.chat_template}, f, indent=2)


def write_release_layout(out_dir: str, policy_dir: str, translator, processor_files: bool = True,
                         base_model: str = TINY_BASE_ID) -> str:
    """Writes a policy and translator exactly as the released ConceptSeg-R1-7B is laid out.

    That is, as the official code saved it with transformers 4.51.3: Qwen weights under
    4.51 names (``model.*``, ``visual.*``, ``lm_head.*``) and the translator's tensors
    beside them, in two shards with ``model.safetensors.index.json`` (the translator's
    tensors fall in both); a flat config naming ``ConceptSegR1ForConditionalGeneration_qwen2p5``
    with ``num_of_query``; a 4.51 generation_config.json; and, with ``processor_files``, the
    tokenizer, preprocessor_config.json and chat_template.json. Without them the processor
    must come from ``base_model``, the config's ``_name_or_path``.
    """
    from safetensors.torch import load_file, save_file

    if translator.config.num_heads != 16:
        raise ValueError("The release stores no head count and the official code uses 16: build the "
                         "translator with num_heads=16 (build_tiny_bundle(translator_heads=16)).")
    os.makedirs(out_dir, exist_ok=True)
    state = {_release_key(k): v for k, v in load_file(os.path.join(policy_dir, "model.safetensors")).items()}
    state.update({k: v.detach().cpu().contiguous() for k, v in translator.state_dict().items()})
    first = ("visual.", "learnable_query.", "connector.pos_embed", "connector.blocks.0.")
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in state.items() if k.startswith(first)}}
    shards["model-00002-of-00002.safetensors"] = {k: v for k, v in state.items() if not k.startswith(first)}
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, os.path.join(out_dir, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(policy_dir, "config.json")) as f:
        config = _release_config(json.load(f), translator.config.num_queries, base_model)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(policy_dir, "generation_config.json")) as f:
        generation = json.load(f)
    generation.update(transformers_version="4.51.3")
    generation.pop("output_attentions", None)
    generation.pop("output_hidden_states", None)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
    if processor_files:
        _write_release_processor(out_dir, policy_dir)
    return out_dir


def put_in_hub_cache(repo_id: str, src_dir: str, revision: str = "0" * 40) -> str:
    """Copies ``src_dir`` into the local Hugging Face cache as ``repo_id``'s snapshot.

    With HF_HUB_OFFLINE=1 the hub client then resolves ``repo_id`` from the cache, as it does
    for a user who downloaded the model once: the real lookup, without a network.
    """
    import shutil

    from huggingface_hub import constants

    root = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(root, "snapshots", revision)
    shutil.copytree(src_dir, snapshot, dirs_exist_ok=True)
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(revision)
    return snapshot


class StandInHub:
    """A local HTTP server that answers the few Hugging Face Hub calls a snapshot download
    makes (repo info, tree listing, file HEAD/GET), serving directories as repositories.

    For tests of downloads where the real Hub cannot be reached: point ``HF_ENDPOINT`` at
    ``url``. A repository in ``gated`` answers its files only to ``Authorization: Bearer
    <token>``, as a gated repository does after access was granted, and 401 with the
    Hub's ``X-Error-Code: GatedRepo`` otherwise.
    """

    def __init__(self, repos: dict[str, str], gated: dict[str, str] | None = None):
        import http.server
        import threading

        hub = self
        self.repos, self.gated, self.requests = repos, gated or {}, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)

    def _answer(self, handler, body: bool) -> None:
        import hashlib
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(handler.path).path).strip("/")
        self.requests.append((handler.command, path))
        parts = path.split("/")
        if parts[:2] == ["api", "models"]:
            repo, rest = "/".join(parts[2:4]), parts[4:]
        else:
            repo, rest = "/".join(parts[0:2]), parts[2:]
        if repo not in self.repos:
            return self._send(handler, 404, {"error": "Repository not found"}, body, {"X-Error-Code": "RepoNotFound"})
        files = self._files(repo)
        sha = hashlib.sha1(repo.encode()).hexdigest()  # one commit per repository
        if parts[:2] == ["api", "models"] and rest[:1] == ["revision"]:
            info = {"id": repo, "sha": sha, "siblings": [{"rfilename": f} for f in files],
                    "gated": "manual" if repo in self.gated else False, "private": False}
            return self._send(handler, 200, info, body)
        if parts[:2] == ["api", "models"] and rest[:1] == ["tree"]:
            entries = [{"type": "file", "path": f, "size": os.path.getsize(os.path.join(self.repos[repo], f)),
                        "oid": hashlib.sha1(f.encode()).hexdigest()} for f in files]
            return self._send(handler, 200, entries, body)
        if rest[:1] == ["resolve"] and len(rest) >= 3:
            if repo in self.gated and handler.headers.get("Authorization") != f"Bearer {self.gated[repo]}":
                return self._send(handler, 401, {"error": f"Access to model {repo} is restricted."}, body,
                                  {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"})
            name = "/".join(rest[2:])
            if name not in files:
                return self._send(handler, 404, {"error": "Entry not found"}, body, {"X-Error-Code": "EntryNotFound"})
            with open(os.path.join(self.repos[repo], name), "rb") as f:
                data = f.read()
            headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            return self._send(handler, 200, data, body, headers)
        return self._send(handler, 404, {"error": "not found"}, body)

    @staticmethod
    def _send(handler, status: int, payload, body: bool, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json")
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)
