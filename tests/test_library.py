"""The concept library: save, list, show, apply, delete, export, import, and what it refuses."""

import json
import os
import shutil
import zipfile

import fiftyone as fo
import numpy as np
import pytest

from conceptseg.runs import jobs
from conceptseg.runs import library
from conceptseg.cli import main
from conceptseg.datasets import two_classes as two_class_dataset
from conceptseg.errors import ConceptSegError


@pytest.fixture(autouse=True)
def lib(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSEG_LIBRARY_DIR", str(tmp_path / "lib"))
    return tmp_path / "lib"


@pytest.fixture
def source(name, tmp_path):
    return two_class_dataset.build(name, str(tmp_path / "media_a"))[0]


@pytest.fixture
def saved(source):
    return library.save("red_disc", source.match_tags("demo"), "gt", classes=["red"], route="appearance")


def test_saved_concept_applied_elsewhere_gives_the_masks_of_a_run_there(source, tmp_path, lib, capsys):
    source_name, demo_ids = source.name, source.match_tags("demo").values("id")
    other = two_class_dataset.build(source.name + "-b", str(tmp_path / "media_b"), seed=1)[0]
    try:
        demos = [s.copy() for s in source.match_tags("demo")]
        for s in demos:
            s.tags = ["lib_demo"]
        other.add_samples(demos)
        targets = other.match_tags("lib_demo", bool=False)
        jobs.segment_by_demonstration(other.match_tags("lib_demo"), targets, "gt", "run", classes=["red"])
        assert main(["concepts", "save", "red_disc", "--dataset", source.name, "--demo-tag", "demo",
                     "--mask-field", "gt", "--classes", "red"]) == 0
        source.delete()  # the saved concept keeps copies: the source may go, files included
        shutil.rmtree(tmp_path / "media_a")
        capsys.readouterr()
        assert main(["concepts", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)["concepts"]
        assert [c["name"] for c in listed] == ["red_disc"] and listed[0]["demonstrations"] == 3
        other.save_view("targets", targets)
        assert main(["concepts", "apply", "red_disc", "--dataset", other.name, "--view", "targets",
                     "--pred-field", "applied", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["segmented"] == 12 and summary["concept_name"] == "red_disc"
        for sample in other.load_saved_view("targets"):
            assert np.array_equal(sample.applied.get_mask(), sample.run.get_mask())
            assert sample.applied["concept_name"] == "red_disc"
            assert sample.applied_instances["concept_name"] == "red_disc"
        record = library.load("red_disc")
        assert record["provenance"]["dataset"] == source_name and record["provenance"]["sample_ids"] == demo_ids
        assert record["rule"] and record["verified"] and record["classes"] == ["red"]
        assert "fiftyone" in record["provenance"]["versions"]
        assert sorted(os.listdir(lib / "red_disc" / "v1" / "demos")) == [
            "000.png", "000_mask.png", "001.png", "001_mask.png", "002.png", "002_mask.png"]
    finally:
        if fo.dataset_exists(other.name):
            other.delete()


@pytest.mark.parametrize("bad", ["../evil", "a/b", "", ".hidden", "x" * 65, "C:\\x"])
def test_names_with_path_characters_are_refused(source, bad):
    with pytest.raises(ConceptSegError, match="not allowed"):
        library.save(bad, source.match_tags("demo"), "gt", classes=["red"], route="appearance")


def test_saving_over_a_name_needs_overwrite(source, saved):
    with pytest.raises(ConceptSegError, match="saved already; pass --overwrite"):
        library.save("red_disc", source.match_tags("demo"), "gt", classes=["blue"], route="appearance")
    assert library.load("red_disc")["classes"] == ["red"]
    library.save("red_disc", source.match_tags("demo"), "gt", classes=["blue"], route="appearance", overwrite=True)
    assert library.load("red_disc")["classes"] == ["blue"]


def test_show_delete_and_unknown_names(saved, capsys):
    assert main(["concepts", "show", "red_disc"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "red_disc"
    assert main(["concepts", "delete", "red_disc"]) == 0
    assert main(["concepts", "show", "red_disc"]) == 2
    assert "No saved concept 'red_disc'" in capsys.readouterr().err


def test_export_import_round_trip(saved, tmp_path, lib):
    out = library.export("red_disc", str(tmp_path / "red.zip"))
    library.delete("red_disc")
    record = library.import_zip(out)
    assert record["name"] == "red_disc" and library.load("red_disc") == saved
    with pytest.raises(ConceptSegError, match="saved already"):
        library.import_zip(out)


def _bad_zip(saved_zip, path, edit):
    """A copy of an exported zip changed by ``edit(zipfile)``."""
    with zipfile.ZipFile(saved_zip) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        edit(dst)
    return path


def _symlink(z):
    info = zipfile.ZipInfo("demos/link.png")
    info.external_attr = (0o120777 << 16)
    z.writestr(info, "/etc/passwd")


@pytest.mark.parametrize("edit,message", [
    (lambda z: z.writestr("../outside.png", b"x"), "leaving the concept's directory"),
    (lambda z: z.writestr("demos/../../x.png", b"x"), "leaving the concept's directory"),
    (lambda z: z.writestr("/abs.png", b"x"), "absolute paths"),
    (_symlink, "symbolic link"),
])
def test_import_refuses_paths_out_and_links(saved, tmp_path, lib, edit, message):
    good = library.export("red_disc", str(tmp_path / "red.zip"))
    library.delete("red_disc")
    bad = _bad_zip(good, str(tmp_path / "bad.zip"), edit)
    with pytest.raises(ConceptSegError, match=message):
        library.import_zip(bad)
    assert not os.path.exists(lib / "red_disc") and not (tmp_path / "outside.png").exists()
    assert [p for p in os.listdir(lib) if not p.startswith(".")] == []


@pytest.mark.parametrize("damage", ["not_image", "truncated"])
def test_import_refuses_non_images_and_truncated_files(saved, tmp_path, lib, damage):
    good = library.export("red_disc", str(tmp_path / "red.zip"))
    library.delete("red_disc")
    with zipfile.ZipFile(good) as z:
        files = {i.filename: z.read(i) for i in z.infolist()}
    files["demos/001.png"] = b"this is not a png" if damage == "not_image" else files["demos/001.png"][:200]
    bad = str(tmp_path / "bad.zip")
    with zipfile.ZipFile(bad, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
    with pytest.raises(ConceptSegError, match="demos/001.png in the zip is not a readable"):
        library.import_zip(bad)
    assert not os.path.exists(lib / "red_disc")
    # A zip cut short (its directory lost) is refused as a zip.
    cut = tmp_path / "cut.zip"
    cut.write_bytes(open(good, "rb").read()[:-100])
    assert main(["concepts", "import", str(cut)]) == 2


def test_applying_a_concept_whose_model_bundle_is_missing(saved, source, lib, tmp_path):
    path = lib / "red_disc" / "v1" / "concept.json"
    record = json.loads(path.read_text())
    record["settings"]["model"] = str(tmp_path / "gone-bundle")
    path.write_text(json.dumps(record))
    with pytest.raises(ConceptSegError, match="model bundle .*gone-bundle.* which is missing"):
        library.apply("red_disc", source, "pred")
    assert not source.has_field("pred")


def test_save_and_apply_operators(plugin_installed, source, name):
    import fiftyone.operators as foo

    plugin = "@conceptseg/conceptseg-r1"
    demo_ids = source.match_tags("demo").values("id")
    result = foo.execute_operator(f"{plugin}/save_concept", dataset=source, selected=demo_ids, params=dict(
        name="red_op", mask_field="gt", classes=["red"], route="appearance"))
    assert result.result["name"] == "red_op" and library.load("red_op")["provenance"]["sample_ids"] == demo_ids
    targets = source.match_tags("demo", bool=False)
    result = foo.execute_operator(f"{plugin}/apply_concept", dataset=source, view=targets, params=dict(
        name="red_op", pred_field="applied", view_target="CURRENT_VIEW"))
    assert result.result["segmented"] == 9 and result.result["concept_name"] == "red_op"
    assert targets.values("applied.concept_name") == ["red_op"] * 9
    # The Rules panel names the saved concept on the sample.
    panel = foo.execute_operator(f"{plugin}/concept_rules", dataset=source, current_sample=targets.first().id,
                                 params={"__method__": "on_load", "panel_id": "p1", "panel_state": {}})
    assert "saved concept *red_op*" in json.dumps(panel.executor.to_json())


def test_reviewing_an_applied_concept_accepts_into_the_concepts_own_field(saved, source):
    from conceptseg.runs import review

    targets = source.match_tags("demo", bool=False)
    library.apply("red_disc", targets, "applied")
    listed = review.review(source, "applied")
    assert len(listed["targets"]) == 9 and listed["mask_field"] == "gt"
    first = listed["targets"][0]["id"]
    # The source dataset's targets carry ground truth of 'red' already: refused unless replaced.
    with pytest.raises(review.ReviewError, match="already has ground truth of 'red' in 'gt'"):
        review.accept(source, "applied", first)
    out = review.accept(source, "applied", first, replace=True)  # the concept's own field is here
    assert out["mask_field"] == "gt" and out["class"] == "red" and out["replaced"] == [first]
