"""The lower ends of pyproject.toml's ranges, seen from the engine (also run by scripts/test_lowest.sh).

SAM 3 needs a newer transformers than the rest: below it, choosing SAM 3 is one sentence that
says what to install, not an ImportError from deep inside a load.
"""

import json
import shutil

import importlib

import pytest

from conceptseg.errors import ConceptSegError


def _pretend_transformers(monkeypatch, version: str) -> None:
    # The module as imported now: transformers' lazy module is not always the one bound at collection.
    monkeypatch.setattr(importlib.import_module("transformers"), "__version__", version)


def _sam3_bundle(tiny_bundle_dir, tmp_path) -> str:
    """The tiny bundle with its segmenter switched to SAM 3 (a directory that is never read)."""
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, out)
    spec = json.loads((out / "bundle.json").read_text())
    spec["segmenter"] = {"kind": "sam3", "config": {"path": "sam3"}}
    (out / "bundle.json").write_text(json.dumps(spec))
    (out / "sam3").mkdir()
    return str(out)


def test_sam3_on_an_older_transformers_is_one_sentence_naming_the_version(tiny_bundle_dir, tmp_path, monkeypatch):
    from conceptseg.model.checkpoint import load_bundle
    from conceptseg.segmenters.sam3_text import SAM3_TRANSFORMERS

    _pretend_transformers(monkeypatch, "4.51.3")
    with pytest.raises(ConceptSegError) as err:
        load_bundle(_sam3_bundle(tiny_bundle_dir, tmp_path), device="cpu")
    assert str(err.value) == (f"SAM 3 needs transformers {SAM3_TRANSFORMERS} or newer (this environment has 4.51.3): "
                              f"pip install 'transformers>={SAM3_TRANSFORMERS}', or use SAM 2.")


def test_the_cli_says_it_in_one_line_and_exits_2(tiny_bundle_dir, tmp_path, monkeypatch, capsys, name):
    import fiftyone as fo
    import numpy as np
    from PIL import Image

    from conceptseg import cli

    image = str(tmp_path / "target.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    fo.Dataset(name).add_sample(fo.Sample(filepath=image))
    _pretend_transformers(monkeypatch, "5.8.1")  # ships Sam3Model, but not what SAM 3 here needs
    code = cli.main(["query", "--dataset", name, "--text", "the thing", "--pred-field", "pred",
                     "--model", _sam3_bundle(tiny_bundle_dir, tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1:] == ["error: SAM 3 needs transformers 5.9.0 or newer (this environment has 5.8.1): "
                                      "pip install 'transformers>=5.9.0', or use SAM 2."], err


def test_this_transformers_runs_the_sam3_tests_or_says_why_not():
    import transformers
    from packaging.version import Version

    from conceptseg.segmenters.sam3_text import SAM3_TRANSFORMERS, sam3_problem

    if Version(transformers.__version__) >= Version(SAM3_TRANSFORMERS):
        assert sam3_problem() is None  # tests marked sam3 run here
    else:
        assert f"pip install 'transformers>={SAM3_TRANSFORMERS}'" in sam3_problem()  # they skip, with this reason
