"""Saved concepts as immutable versions (read as one snapshot), and a concept that learns from its use.

- issue 21.7: `concepts import --overwrite` while another process applies the same concept
  must never hand the apply the masks of one version with the images of another;
- issue 22.6: on a run made by `concepts apply`, accept / reject / promote / rerun work, and
  `concepts update` adds what they taught to the saved concept as its next version.
"""

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest

from conceptseg.runs import jobs
from conceptseg.runs import library
from conceptseg.runs import review
from conceptseg.cli import main
from conceptseg.datasets import two_classes as two_class_dataset
from conceptseg.errors import ConceptSegError
from conceptseg.install import PLUGIN_NAME

CLI = [sys.executable, "-m", "conceptseg.cli"]


@pytest.fixture(autouse=True)
def lib(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSEG_LIBRARY_DIR", str(tmp_path / "lib"))
    return tmp_path / "lib"


@pytest.fixture
def source(name, tmp_path):
    return two_class_dataset.build(name, str(tmp_path / "media_a"))[0]


@pytest.fixture
def other(name, tmp_path):
    """Another dataset (other scenes) without the concept's mask field: where the concept is applied."""
    dataset, truth = two_class_dataset.build(name + "-other", str(tmp_path / "media_b"), count=8, seed=3)
    for field in ("gt", "gt_rgb", "dets"):
        dataset.delete_sample_field(field)
    yield dataset, truth
    if fo.dataset_exists(dataset.name):
        dataset.delete()


def _save(source, name="red_disc", classes=("red",), field="gt", overwrite=False, demos=None):
    demos = demos if demos is not None else source.match_tags("demo")
    return library.save(name, demos, field, classes=list(classes), route="appearance", overwrite=overwrite)


def _masks(view, field) -> dict:
    return {s.id: s[field].get_mask() > 0 for s in view.select_fields(field)}


def _digest(masks: dict) -> str:
    h = hashlib.sha1()
    for key in sorted(masks):
        h.update(key.encode() + np.packbits(masks[key]).tobytes())
    return h.hexdigest()


def _cli(capsys, *argv, code=0):
    assert main(list(argv)) == code, capsys.readouterr()
    return capsys.readouterr()


# ---- versions on disk, NAME@N ----------------------------------------------------------------


def test_each_save_is_a_version_and_the_pointer_names_the_current_one(source, lib, capsys):
    first = _save(source)
    assert first["version"] == 1 and (lib / "red_disc" / "current").read_text().strip() == "1"
    assert sorted(os.listdir(lib / "red_disc" / "v1")) == ["concept.json", "demos"]
    second = _save(source, classes=("blue",), overwrite=True)
    assert second["version"] == 2 and (lib / "red_disc" / "current").read_text().strip() == "2"
    assert library.load("red_disc") == second and library.load("red_disc@1") == first
    shown = json.loads(_cli(capsys, "concepts", "show", "red_disc").out)
    assert shown["version"] == 2 and shown["classes"] == ["blue"]
    assert json.loads(_cli(capsys, "concepts", "show", "red_disc@1").out)["classes"] == ["red"]
    listed = json.loads(_cli(capsys, "concepts", "list", "--json").out)["concepts"]
    assert [(c["name"], c["version"]) for c in listed] == [("red_disc", 2)]
    # Nothing but the versions, the pointer and (next to the concept) its writer lock is left.
    assert sorted(os.listdir(lib / "red_disc")) == ["current", "v1", "v2"]
    assert sorted(os.listdir(lib)) == [".red_disc.lock", "red_disc"]


@pytest.mark.parametrize("ref,message", [
    ("red_disc@3", "has no version 3; its versions: red_disc@1"),
    ("red_disc@0", "is not NAME@VERSION"),
    ("red_disc@x", "is not NAME@VERSION"),
    ("red_disc@", "is not NAME@VERSION"),
    ("../x@1", "not allowed"),
    ("nosuch@1", "No saved concept 'nosuch'"),
])
def test_bad_version_references_are_one_sentence(source, capsys, ref, message):
    _save(source)
    assert main(["concepts", "show", ref]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_export_of_an_older_version_and_import_numbers_it_anew(source, tmp_path):
    _save(source)
    _save(source, classes=("blue",), overwrite=True)
    old = library.export("red_disc@1", str(tmp_path / "v1.zip"))
    library.delete("red_disc")
    assert library.import_zip(old)["version"] == 1
    assert library.load("red_disc")["classes"] == ["red"]
    record = library.import_zip(old, overwrite=True)  # an import over it is its next version
    assert record["version"] == 2 and library.load("red_disc")["version"] == 2


def _legacy(lib, name="red_disc"):
    """Turns a saved concept into the layout before versions: NAME/concept.json and NAME/demos/."""
    root = lib / name
    for entry in os.listdir(root / "v1"):
        shutil.move(str(root / "v1" / entry), str(root / entry))
    (root / "v1").rmdir()
    (root / "current").unlink()
    record = json.loads((root / "concept.json").read_text())
    del record["version"]
    (root / "concept.json").write_text(json.dumps(record))


def test_old_single_directory_concepts_load_as_version_1(source, lib, tmp_path):
    targets = source.match_tags("demo", bool=False)
    _save(source)
    library.apply("red_disc", targets, "fresh")
    _legacy(lib)
    assert sorted(os.listdir(lib / "red_disc")) == ["concept.json", "demos"]
    assert library.load("red_disc")["version"] == 1 and library.exists("red_disc")
    assert [c["version"] for c in library.list_concepts()] == [1]
    summary = library.apply("red_disc", targets, "old", overwrite=True)
    assert summary["concept_version"] == 1
    assert _digest(_masks(targets, "old")) == _digest(_masks(targets, "fresh"))
    # A new version goes beside the old files; version 1 is still read where it lies.
    _save(source, classes=("blue",), overwrite=True)
    assert sorted(os.listdir(lib / "red_disc")) == ["concept.json", "current", "demos", "v2"]
    assert library.load("red_disc")["classes"] == ["blue"] and library.load("red_disc@1")["classes"] == ["red"]
    library.apply("red_disc@1", targets, "old_again", overwrite=True)
    assert _digest(_masks(targets, "old_again")) == _digest(_masks(targets, "fresh"))
    library.export("red_disc@1", str(tmp_path / "old.zip"))
    library.delete("red_disc")
    assert not (lib / "red_disc").exists()


# ---- one snapshot per reader ---------------------------------------------------------------


@pytest.fixture
def two_versions(source, tmp_path):
    """Zips of two versions of concept 'cc' (red discs; blue squares on other scenes) and each one's labels on
    the targets."""
    scenes_b = two_class_dataset.build(source.name + "-b", str(tmp_path / "media_c"), count=4, seed=7)[0]
    try:
        _save(source, name="cc", classes=("red",))
        _save(source, name="cc", classes=("blue",), overwrite=True, demos=scenes_b.match_tags("demo"))
    finally:
        scenes_b.delete()
    zips = {"red": library.export("cc@1", str(tmp_path / "red.zip")),
            "blue": library.export("cc@2", str(tmp_path / "blue.zip"))}
    targets = source.match_tags("demo", bool=False).limit(2)
    expected = {}
    for version, colour in ((1, "red"), (2, "blue")):
        library.apply(f"cc@{version}", targets, "expected", overwrite=True)
        expected[colour] = _digest(_masks(targets, "expected"))
    assert expected["red"] != expected["blue"]
    return zips, targets, expected


def test_an_overwrite_landing_while_apply_reads_leaves_that_apply_on_its_version(two_versions, monkeypatch):
    """Deterministic interleaving: another process imports over the concept after apply resolved it."""
    zips, targets, expected = two_versions
    library.import_zip(zips["red"], overwrite=True)  # version 3: red
    real = library.scratch_demonstrations
    landed = []

    def overwrite_first(snapshot, extra=()):
        out = subprocess.run([*CLI, "concepts", "import", zips["blue"], "--overwrite"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        landed.append(library.load("cc")["version"])
        return real(snapshot, extra)

    monkeypatch.setattr(library.applying, "scratch_demonstrations", overwrite_first)
    summary = library.apply("cc", targets, "applied", overwrite=True)
    assert landed == [4] and summary["concept_version"] == 3
    assert _digest(_masks(targets, "applied")) == expected["red"]
    assert set(targets.values("applied.concept_version")) == {3}
    monkeypatch.setattr(library.applying, "scratch_demonstrations", real)
    assert library.apply("cc", targets, "applied", overwrite=True)["concept_version"] == 4
    assert _digest(_masks(targets, "applied")) == expected["blue"]


IMPORTER = """
import sys
from conceptseg.runs import library
zips, burst = sys.argv[1:3], int(sys.argv[3])
count = 0
for _ in sys.stdin:  # a burst of imports each time an apply ends, overlapping the next apply
    for _ in range(burst):
        library.import_zip(zips[count % 2], overwrite=True)
        count += 1
print(count)
"""

APPLIER = """
import hashlib, json, sys
import fiftyone as fo
import numpy as np
from conceptseg.runs import library
dataset_name, ids, applies = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
targets = fo.load_dataset(dataset_name).select(ids)
for _ in range(applies):
    summary = library.apply("cc", targets, "applied", overwrite=True)
    h = hashlib.sha1()
    for s in sorted(targets.select_fields("applied"), key=lambda s: s.id):
        h.update(s.id.encode() + np.packbits(s.applied.get_mask() > 0).tobytes())
    print(json.dumps({"version": summary["concept_version"], "digest": h.hexdigest()}), flush=True)
"""


def test_concurrent_imports_and_applies_never_mix_versions(two_versions, source, lib):
    """Two processes import the two versions over each other while a third applies the concept.

    No sleeps: each time an apply ends, both importers start a burst of imports that runs
    while the next apply resolves the concept and reads its files.
    """
    zips, targets, expected = two_versions
    applies, burst = 8, 6
    importers = [subprocess.Popen([sys.executable, "-c", IMPORTER, *order, str(burst)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for order in ((zips["red"], zips["blue"]), (zips["blue"], zips["red"]))]
    applier = subprocess.Popen([sys.executable, "-c", APPLIER, source.name, ",".join(targets.values("id")),
                                str(applies)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = []
    try:
        for line in itertools.chain([""], iter(applier.stdout.readline, "")):  # a first burst as the applier starts
            if line:
                results.append(json.loads(line))
            for proc in importers:
                proc.stdin.write("go\n")
                proc.stdin.flush()
    finally:
        errors = applier.communicate(timeout=600)[1]
        outs = [proc.communicate(timeout=600) for proc in importers]  # closes their stdin: they end
    assert applier.returncode == 0, errors
    for proc, (_, err) in zip(importers, outs):
        assert proc.returncode == 0, err
    imports = sum(int(out) for out, _ in outs)
    assert len(results) == applies and imports == 2 * burst * (applies + 1)
    # Every apply's labels are those of the version it resolved, read whole from that version.
    for result in results:
        colour = library.load(f"cc@{result['version']}")["classes"][0]
        assert result["digest"] == expected[colour], result
    assert len({r["version"] for r in results}) >= 2
    # Concurrent writers never took the same number: versions are 1..N without a gap, the pointer on the last.
    versions = sorted(int(d[1:]) for d in os.listdir(lib / "cc") if d.startswith("v"))
    assert versions == list(range(1, 3 + imports)) and library.load("cc")["version"] == 2 + imports
    assert not [d for d in os.listdir(lib / "cc") if d.startswith(".")]


# ---- a saved concept learns from its use -----------------------------------------------------


@pytest.fixture
def applied(source, other):
    """'red_disc' saved on the source and applied to the other dataset (which has no 'gt')."""
    _save(source)
    dataset, truth = other
    summary = library.apply("red_disc", dataset, "applied")
    assert summary["concept_version"] == 1
    return dataset, truth


def test_accept_on_an_applied_run_needs_a_mask_field_and_creates_it(applied, capsys):
    dataset, truth = applied
    targets = review.review(dataset, "applied")
    assert len(targets["targets"]) == 8 and targets["mask_field"] is None
    first, second = [t["id"] for t in targets["targets"][:2]]
    err = _cli(capsys, "accept", "--dataset", dataset.name, "--pred-field", "applied", "--ids", first, code=2).err
    assert "applied the saved concept 'red_disc', whose mask field 'gt' is not on" in err
    assert "--mask-field" in err and "Traceback" not in err
    _cli(capsys, "accept", "--dataset", dataset.name, "--pred-field", "applied", "--ids", first,
         "--mask-field", "truth")
    schema = dataset.get_field_schema()
    assert schema["truth"].document_type is fo.Segmentation and dataset.mask_targets["truth"] == {1: "red"}
    sample = dataset[first]
    assert np.array_equal(sample.truth.get_mask() == 1, sample.applied.get_mask() > 0)
    assert review.ACCEPTED_TAG in sample.tags
    # The loop keeps its field: the next accept needs no --mask-field, another one is refused.
    err = _cli(capsys, "accept", "--dataset", dataset.name, "--pred-field", "applied", "--ids", second,
               "--mask-field", "elsewhere", code=2).err
    assert "accepted masks are in 'truth' already" in err
    out = review.accept(dataset, "applied", second)
    assert out["mask_field"] == "truth" and out["total_accepted"] == 2
    assert review.review(dataset, "applied")["mask_field"] == "truth"


def test_promote_and_absent_on_an_applied_run(applied, capsys):
    dataset, truth = applied
    ids = [t["id"] for t in review.review(dataset, "applied")["targets"]]
    showing = [i for i in ids if truth[i]["red"].any()]
    for sample_id in showing[:2]:  # corrections drawn in another field (binary)
        sample = dataset[sample_id]
        sample["fix"] = fo.Segmentation(mask=truth[sample_id]["red"].astype(np.uint8))
        sample.save()
    out = json.loads(_cli(capsys, "promote", "--dataset", dataset.name, "--pred-field", "applied", "--from-field",
                          "fix", "--ids", ",".join(showing[:2]), "--mask-field", "truth", "--json").out)
    assert out["promoted"] == showing[:2] and out["mask_field"] == "truth" and out["class"] == "red"
    for sample_id in showing[:2]:
        assert np.array_equal(dataset[sample_id].truth.get_mask() == 1, truth[sample_id]["red"])
    # Absent is checked against the loop's field: a sample showing the concept there is refused.
    drawn = dataset[showing[2]]
    drawn["truth"] = fo.Segmentation(mask=truth[showing[2]]["red"].astype(np.uint8))
    drawn.save()
    with pytest.raises(ConceptSegError, match="show the concept in 'truth', so it is not absent"):
        review.reject(dataset, "applied", [showing[2]], absent=True)
    assert review.reject(dataset, "applied", [showing[3]], absent=True)["negatives"] == [showing[3]]


def test_a_detections_concept_is_accepted_into_a_new_detections_field(source, other):
    library.save("red_dets", source.match_tags("demo"), "dets", classes=["red"], route="appearance")
    dataset, _ = other
    library.apply("red_dets", dataset, "applied")
    target = review.review(dataset, "applied")["targets"][0]["id"]
    review.accept(dataset, "applied", target, mask_field="boxes")
    assert dataset.get_field_schema()["boxes"].document_type is fo.Detections
    assert {d.label for d in dataset[target].boxes.detections} == {"red"}


def test_an_existing_field_gets_the_concepts_class(applied):
    dataset, _ = applied
    target = review.review(dataset, "applied")["targets"][0]["id"]
    seg = np.zeros((128, 128), np.uint8)
    seg[:4, :4] = 1
    sample = dataset[target]
    sample["mine"] = fo.Segmentation(mask=seg)
    sample.save()
    dataset.mask_targets = {**dataset.mask_targets, "mine": {1: "sky"}}
    dataset.save()
    out = review.accept(dataset, "applied", target, mask_field="mine")
    assert out["class"] == "red" and dataset.mask_targets["mine"] == {1: "sky", 2: "red"}
    mask = dataset[target].mine.get_mask()
    assert (mask[:4, :4] == 1).all() and (mask == 2).any()


def test_rerun_and_update_grow_the_concept_and_keep_the_old_version(applied, lib, capsys):
    dataset, truth = applied
    before = _masks(dataset, "applied")
    listed = [t["id"] for t in review.review(dataset, "applied")["targets"]]
    negative = [s.id for s in dataset if not truth[s.id]["red"].any()]
    accepted = [i for i in listed if i not in negative][:2]
    review.accept(dataset, "applied", accepted, mask_field="truth")
    review.reject(dataset, "applied", negative, absent=True)
    # A re-run fits on the concept's demonstrations plus the accepted and absent samples.
    out = json.loads(_cli(capsys, "rerun", "--dataset", dataset.name, "--pred-field", "applied", "--json").out)
    assert out["round"] == 2 and out["demonstrations"] == 3 + len(accepted) + len(negative)
    rounds = review.review(dataset, "applied")["rounds"]
    assert sorted(rounds[-1]["demonstrations"]) == sorted(
        [f"red_disc@1:demos/00{i}.png" for i in range(3)] + accepted + negative)
    left = dataset.exclude(accepted + negative)
    assert set(left.values("applied.concept_name")) == {"red_disc"} and out["segmented"] == len(left)
    # `concepts update` adds them to the saved concept as version 2.
    printed = _cli(capsys, "concepts", "update", "red_disc", "--dataset", dataset.name, "--pred-field", "applied").out
    assert "to version 2" in printed and "red_disc@1" in printed
    shown = json.loads(_cli(capsys, "concepts", "show", "red_disc").out)
    assert shown["version"] == 2 and len(shown["demonstrations"]) == 3 + len(accepted) + len(negative)
    grown = shown["demonstrations"][3:]
    assert [e["sample_id"] for e in grown] == accepted + negative
    assert {e["dataset"] for e in grown} == {dataset.name}
    assert [e["negative"] for e in grown] == [False] * len(accepted) + [True] * len(negative)
    update = shown["provenance"]["updates"][-1]
    assert update["from_version"] == 1 and update["pred_field"] == "applied" and update["negatives"] == len(negative)
    # Version 2's files: version 1's, plus each accepted image and its accepted mask.
    root = lib / "red_disc" / "v2"
    for entry in shown["demonstrations"]:
        assert (root / entry["image"]).is_file() and (root / entry["mask"]).is_file()
    import cv2

    first = shown["demonstrations"][3]
    mask = cv2.imread(str(root / first["mask"]), cv2.IMREAD_GRAYSCALE) > 0
    assert np.array_equal(mask, dataset[accepted[0]].truth.get_mask() == 1)
    # The previous version stays applicable as NAME@1, with the labels it gave before.
    _cli(capsys, "concepts", "apply", "red_disc@1", "--dataset", dataset.name, "--pred-field", "again")
    assert _digest(_masks(dataset, "again")) == _digest(before)
    assert set(dataset.values("again.concept_version")) == {1}
    # Nothing new: said in a sentence, no version written.
    err = _cli(capsys, "concepts", "update", "red_disc", "--dataset", dataset.name, "--pred-field", "applied",
               code=2).err
    assert "Nothing to add to 'red_disc'" in err and "in version 2 already" in err
    assert library.load("red_disc")["version"] == 2


def test_update_refuses_other_runs_and_other_concepts(applied, source, capsys):
    dataset, _ = applied
    _save(source, name="other_concept")
    err = _cli(capsys, "concepts", "update", "other_concept", "--dataset", dataset.name, "--pred-field", "applied",
               code=2).err
    assert "applied the saved concept 'red_disc', not 'other_concept'" in err
    err = _cli(capsys, "concepts", "update", "red_disc", "--dataset", dataset.name, "--pred-field", "applied",
               code=2).err
    assert "nothing on 'applied' is accepted or rejected as absent yet" in err
    jobs.segment_by_demonstration(source.match_tags("demo"), source, "gt", "own", classes=["red"], route="appearance")
    err = _cli(capsys, "concepts", "update", "red_disc", "--dataset", source.name, "--pred-field", "own", code=2).err
    assert "was not made by `concepts apply`" in err


def test_an_update_made_on_a_version_that_changed_meanwhile_is_refused(applied, source, monkeypatch):
    dataset, _ = applied
    review.accept(dataset, "applied", review.review(dataset, "applied")["targets"][0]["id"], mask_field="truth")
    real = library.read_demonstrations

    def overwritten_meanwhile(snapshot):
        _save(source, classes=("blue",), overwrite=True)
        return real(snapshot)

    monkeypatch.setattr(library.applying, "read_demonstrations", overwritten_meanwhile)
    with pytest.raises(ConceptSegError, match="changed while this update was prepared .*version 2 now"):
        library.update("red_disc", dataset, "applied")
    assert library.load("red_disc")["classes"] == ["blue"] and library.load("red_disc")["version"] == 2


def test_accept_on_an_applied_run_writes_under_the_class_its_demonstrations_showed(nuclei_dataset):
    """Saved without classes from a 0/1 field named {1: "concept"}: accepts go in as value 1, no new class."""
    dataset = nuclei_dataset
    library.save("nd", dataset.match_tags("demo"), "ground_truth")
    assert library.load("nd")["settings"]["shown_class"] == {"name": "concept", "value": 1}
    library.apply("nd", dataset, "applied")
    target = review.review(dataset, "applied")["targets"][0]["id"]
    assert review.holding_truth(dataset, "applied", [target]) == [target]  # its ground truth shows the class
    with pytest.raises(ConceptSegError, match="already has ground truth of 'concept' in 'ground_truth'"):
        review.accept(dataset, "applied", [target])
    out = review.accept(dataset, "applied", [target], replace=True)
    assert out["class"] == "concept" and out["replaced"] == [target]
    dataset.reload()
    assert dataset.mask_targets["ground_truth"] == {1: "concept"}  # no class 2 named after the concept
    truth, predicted = dataset[target].ground_truth.get_mask(), dataset[target].applied.get_mask() > 0
    assert set(np.unique(truth)) <= {0, 1} and np.array_equal(truth == 1, predicted)


# ---- the Update concept operator -------------------------------------------------------------

UPDATE = f"{PLUGIN_NAME}/update_concept"


def _form(dataset, **params):
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params})
    return foo.get_operator(UPDATE).resolve_input(ctx).type.properties


def test_update_concept_operator(plugin_installed, applied, monkeypatch):
    dataset, _ = applied
    params = {"pred_field": "applied", "name": "red_disc"}
    props = _form(dataset)
    assert props["pred_field"].default == "applied" and props["name"].default == "red_disc"
    assert props["nothing"].invalid  # nothing accepted yet: said before Execute
    assert _form(dataset, name="other")["name"].error_message == "'applied' applied 'red_disc', not 'other'."
    target = review.review(dataset, "applied")["targets"][0]["id"]
    review.accept(dataset, "applied", target, mask_field="truth")
    assert _form(dataset)["what"].view.label == (
        "Adds 1 accepted and 0 absent sample(s) to 'red_disc' as version 2; version 1 stays applicable as "
        "red_disc@1.")
    result = foo.execute_operator(UPDATE, dataset=dataset, params=params)
    assert result.error is None and result.result["version"] == 2 and result.result["added"] == 1
    assert result.result["message"].startswith("Saved 'red_disc' version 2: 1 sample(s) added, 4 demonstrations")
    assert library.load("red_disc")["version"] == 2
    assert _form(dataset)["nothing"].invalid  # its sample is in version 2 now
    # What the form cannot know (the library changing under it) comes back as one sentence, not a traceback.
    review.reject(dataset, "applied", review.review(dataset, "applied")["targets"][0]["id"], absent=True)

    def changed(*args):
        raise library.LibraryError("Concept 'red_disc' changed while this update was prepared.")

    monkeypatch.setattr(library, "update", changed)
    from_app = {"sample_selection_style": {"default": "checkmark", "alt": "checkmark"}}  # as the App sends it
    result = foo.execute_operator(UPDATE, dataset=dataset, params=params, **from_app)
    assert result.error is None
    notified = [r["params"] for r in result.executor.to_json()["requests"] if r["operator_uri"] == "notify"]
    assert notified == [{"message": "Concept 'red_disc' changed while this update was prepared.", "variant": "error"}]
    library.delete("red_disc")
    assert _form(dataset)["name"].error_message == "No saved concept 'red_disc' (deleted since it was applied)."


def test_update_concept_form_without_applied_runs(plugin_installed, source):
    props = _form(source)
    assert props["pred_field"].invalid and "No run made by Apply concept" in props["pred_field"].error_message


def test_accept_operator_asks_for_the_mask_field_of_an_applied_run(plugin_installed, applied):
    dataset, _ = applied
    from fiftyone.operators.executor import ExecutionContext

    target = review.review(dataset, "applied")["targets"][0]["id"]
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "selected": [target],
                                           "params": {"pred_field": "applied"}})
    props = foo.get_operator(f"{PLUGIN_NAME}/accept_targets").resolve_input(ctx).type.properties
    assert props["mask_field"].invalid and "'gt' is not on this dataset" in props["mask_field"].error_message
    result = foo.execute_operator(f"{PLUGIN_NAME}/accept_targets", dataset=dataset, selected=[target],
                                  params={"pred_field": "applied", "mask_field": "truth"})
    assert result.error is None and result.result["mask_field"] == "truth"
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {"pred_field": "applied"}})
    props = foo.get_operator(f"{PLUGIN_NAME}/accept_targets").resolve_input(ctx).type.properties
    assert props["mask_field"].default == "truth" and not props["mask_field"].invalid
