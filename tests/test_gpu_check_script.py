"""benchmarks/gpu_check.py runs every row at a tiny shape on the CPU (--smoke) and writes its JSON.

The GPU run itself happens only in a session lent a GPU; this keeps the script working between them.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, "benchmarks", "gpu_check.py")


def _run(out, *extra, timeout=240):
    env = dict(os.environ, PYTHONPATH=os.path.join(_ROOT, "plugin"))
    proc = subprocess.run([sys.executable, _SCRIPT, "--smoke", "--out", str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("gpu_check") / "smoke.json")


def test_smoke_run_measures_every_row(smoke):
    result, stdout = smoke
    for key in ("device", "torch", "transformers", "bandwidth_tbps", "decode_weight_gb", "elapsed_s", "best"):
        assert key in result, key
    assert result["smoke"] is True and result["device"].startswith("cpu")
    options = {"dynamic-eager", "dynamic-sdpa", "static-sdpa", "static-sdpa-compile"}
    assert {(r["option"], r["batch"]) for r in result["decode"]} == {(o, b) for o in options for b in (1, 2)}
    for row in result["decode"]:
        assert "error" not in row and "skipped" not in row, row
        for key in ("step_ms", "tok_s", "roofline", "roofline_with_kv", "prefill_ms", "kv_gb"):
            assert row[key] > 0, (key, row)
        # generate's own torch.compile only for the compile option (the eager backend on the CPU)
        assert row["compiled"] == (row["option"] == "static-sdpa-compile"), row
    assert [r["batch"] for r in result["sam2"]] == [1, 2]
    assert all(r["images_s"] > 0 for r in result["sam2"])
    order = [("default", 1), ("default", 2), ("prefix", 2), ("best", 1)]
    assert [(r["option"], r["batch"]) for r in result["e2e"]] == order
    for row in result["e2e"]:
        if row["option"] == "prefix" and importlib.util.find_spec("conceptseg.model.prefix") is None:
            assert row["skipped"] == "this checkout has no conceptseg.model.prefix (prefix reuse)"
            continue
        assert row["images_s"] > 0 and row["policy_s"] > 0 and row["segmenter"] == "sam2", row
    assert [r["batch"] for r in result["exemplar"]] == [1, 2]
    for row in result["exemplar"]:
        if "skipped" in row and "SAM 3" in row["skipped"]:  # a transformers without SAM 3
            continue
        assert row["option"] == "sam3-112" and row["images_s"] > 0 and row["detect_ms"] > 0, row
    best = result["best"]
    assert best["option"] in options and best["goal"] == 0.5 and isinstance(best["goal_met"], bool)
    assert "best at B = 1: " + best["option"] in stdout and "| static-sdpa-compile | 2 |" in stdout


def test_gpu_defaults_reads_best(smoke, tmp_path):
    result, _ = smoke
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    spec = importlib.util.spec_from_file_location("gpu_check", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defaults = module.gpu_defaults(str(path))
    assert defaults["attn_implementation"] == result["best"]["attn_implementation"]
    assert set(defaults["generate_kwargs"]) == set(result["best"]["generate_kwargs"])


def test_spent_budget_skips_rows_and_still_writes(tmp_path):
    result, stdout = _run(tmp_path / "spent.json", "--budget-s", "1", timeout=120)
    rows = result["decode"] + result["sam2"] + result["e2e"]
    assert rows and all(r.get("skipped", "").startswith("time budget") for r in rows), rows
    assert result["best"] is None and "best at B = 1: none" in stdout
