"""The concept library under hostile use (issue 21: items 5, 6, 11, 12 and the library's raw tracebacks).

Each case checks what the user sees (exit status, one sentence on stderr, no traceback) and
that what they had before (their files, the library, the dataset's labels) is still there.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
import zlib

import cv2
import fiftyone as fo
import numpy as np
import pytest

from conceptseg.runs import library
from conceptseg.cli import main
from conceptseg.datasets import two_classes as two_class_dataset
from conceptseg.errors import ConceptSegError

CLI = [sys.executable, "-m", "conceptseg.cli"]
SCRATCH = library.SCRATCH_PREFIX + "*"


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


@pytest.fixture
def exported(saved, tmp_path):
    return library.export("red_disc", str(tmp_path / "red.zip"))


def _refused(capsys, argv, *words):
    """The command exits 2 with one line on stderr holding ``words``, and no traceback."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _zip_files(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _write_zip(path, files: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in files.items():
            z.writestr(member, data)
    return str(path)


def _with_record(exported, path, edit) -> str:
    """A copy of the exported zip whose concept.json is ``edit(record)`` (or what edit returns)."""
    files = _zip_files(exported)
    record = json.loads(files["concept.json"])
    changed = edit(record)
    files["concept.json"] = json.dumps(record if changed is None else changed).encode()
    return _write_zip(path, files)


def _library_entries(lib) -> list[str]:
    """What the library directory holds, lock files aside."""
    if not os.path.isdir(lib):
        return []
    return sorted(p for p in os.listdir(lib) if not (p.startswith(".") and p.endswith(".lock")))


def _record_path(lib, name: str):
    """The concept.json a load of ``name`` reads: the newest one under its directory (whatever the layout)."""
    return max((lib / name).rglob("concept.json"), key=lambda p: p.stat().st_mtime_ns)


def _subprocess_env() -> dict:
    return dict(os.environ)


def _default_sigint():
    """The child gets SIGINT's default handler even where the test runner ignores SIGINT (nohup, a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ---- 5. export ----------------------------------------------------------------------------


def test_export_refuses_an_existing_file_unless_overwrite(saved, tmp_path, capsys):
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), np.eye(8, dtype=np.uint8) * 255)
    before = mask.read_bytes()
    _refused(capsys, ["concepts", "export", "red_disc", str(mask)], "exists already", "--overwrite")
    assert mask.read_bytes() == before  # the user's PNG is still their PNG
    assert main(["concepts", "export", "red_disc", str(mask), "--overwrite"]) == 0
    assert set(_zip_files(mask)) >= {"concept.json", "demos/000.png"}
    assert sorted(os.listdir(tmp_path)) == ["lib", "mask.png", "media_a"]  # no temporary file left


def test_export_to_a_missing_directory_or_onto_a_directory(saved, tmp_path, capsys):
    _refused(capsys, ["concepts", "export", "red_disc", str(tmp_path / "nowhere" / "red.zip")], "does not exist")
    assert not (tmp_path / "nowhere").exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        _refused(capsys, ["concepts", "export", "red_disc", str(folder), *extra], "is a directory")
    assert sorted(os.listdir(folder)) == ["keep.txt"] and (folder / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_export_never_leaves_a_partial_zip(saved, tmp_path, monkeypatch, failure):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "red.zip"
    target.write_bytes(b"the previous export")
    calls = []
    original = zipfile.ZipFile.write

    def fail_midway(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise failure
        return original(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "write", fail_midway)
    with pytest.raises(KeyboardInterrupt if failure is KeyboardInterrupt else ConceptSegError):
        library.export("red_disc", str(target), overwrite=True)
    assert os.listdir(out) == ["red.zip"] and target.read_bytes() == b"the previous export"
    monkeypatch.setattr(zipfile.ZipFile, "write", original)
    assert library.export("red_disc", str(target), overwrite=True) == str(target)
    assert os.listdir(out) == ["red.zip"] and oct(target.stat().st_mode & 0o777) != "0o600"


# ---- 6. image sizes from the header, before decoding ----------------------------------------


def _png_claiming(width: int, height: int, rows: int) -> bytes:
    """A PNG whose header says width x height, with ``rows`` rows of (highly compressible) data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * width) * rows, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is rewritten to say width x height."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


_MEASURE = """
import resource, sys, time
from conceptseg.runs import library
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    library.validate_zip(sys.argv[1])
    outcome = "accepted"
except library.LibraryError as e:
    outcome = str(e)
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(repr((outcome, seconds, grown)))
"""


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_a_small_zip_claiming_a_huge_image_is_refused_fast_and_small(exported, tmp_path, capsys, lib, kind):
    files = _zip_files(exported)
    library.delete("red_disc")
    if kind == "png":
        files["demos/000.png"] = _png_claiming(32000, 32000, rows=200)
    else:
        files["demos/000.png"] = _jpeg_claiming(30000, 30000)
    bad = _write_zip(tmp_path / "huge.zip", files)
    assert len(files["demos/000.png"]) < 24 * 1024  # about 22 KB claiming 32000x32000: the case
    run = subprocess.run([sys.executable, "-c", _MEASURE, bad], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    outcome, seconds, grown_mb = eval(run.stdout.strip().splitlines()[-1])
    side = "32000x32000" if kind == "png" else "30000x30000"
    assert f"demos/000.png in the zip is {side}" in outcome and "too large" in outcome
    assert seconds < 1.0 and grown_mb < 100, (seconds, grown_mb)  # not the 6 GB a decode allocates
    _refused(capsys, ["concepts", "import", bad], side, "too large")
    assert _library_entries(lib) == []


def test_header_size_agrees_with_the_decoder():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (37, 53, 3), np.uint8)
    cases = [
        cv2.imencode(".png", image)[1], cv2.imencode(".png", image[..., 0])[1],
        cv2.imencode(".png", image.astype(np.uint16) * 200)[1], cv2.imencode(".jpg", image)[1],
        cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1],
    ]
    for encoded in cases:
        assert library.header_size(encoded.tobytes()) == (53, 37)
    bmp = cv2.imencode(".bmp", image)[1].tobytes()
    for other in (bmp, b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"not an image"):
        assert library.header_size(other) is None


def test_a_png_shorter_than_its_header_says_is_refused(exported, tmp_path, lib, capsys):
    files = _zip_files(exported)
    library.delete("red_disc")
    files["demos/001.png"] = _png_claiming(128, 128, rows=3)  # 3 of 128 rows
    _refused(capsys, ["concepts", "import", _write_zip(tmp_path / "short.zip", files)], "not a readable PNG/JPEG")
    assert _library_entries(lib) == []


# ---- 11. ids given to save ---------------------------------------------------------------


def test_save_ids_that_are_not_ids_or_not_samples(source, capsys):
    real = source.match_tags("demo").values("id")
    ghost = "0123456789abcdef01234567"
    base = ["concepts", "save", "red_disc", "--dataset", source.name, "--mask-field", "gt", "--classes", "red",
            "--route", "appearance"]
    _refused(capsys, [*base, "--ids", "nothex"], "'nothex' is not a sample id")
    _refused(capsys, [*base, "--ids", f"{ghost},0123456789abcdef01234568"], "None of the 2 id(s)", "nothing to save")
    assert not library.exists("red_disc")
    assert main([*base, "--ids", ",".join([*real, ghost])]) == 0
    err = capsys.readouterr().err
    assert f"warning: 1 of the 4 id(s) given are not samples of {source.name!r} and were left out: {ghost}" in err
    record = library.load("red_disc")
    assert len(record["demonstrations"]) == 3 and record["provenance"]["sample_ids"] == real
    assert record["warnings"] == [err.split("warning: ", 1)[1].strip()]


# ---- 12. apply: interrupted, killed, resumed ------------------------------------------------

# The CLI with each label's write slowed down, so that a signal lands in the middle of the run.
_SLOW_CLI = """
import sys, time
from conceptseg.runs import writing
write = writing.write_labels
def slow(*args, **kwargs):
    time.sleep(0.3)
    return write(*args, **kwargs)
writing.write_labels = slow
from conceptseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_slow_apply(dataset, pred_field: str, *extra):
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, "concepts", "apply", "red_disc", "--dataset", dataset.name,
         "--pred-field", pred_field, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
        preexec_fn=_default_sigint,
    )


def _wait_for_progress(proc, lines: int) -> None:
    seen = 0
    for line in proc.stderr:
        if "targets" in line:
            seen += 1
            if seen == lines:
                return
    raise AssertionError(f"the apply ended before {lines} progress lines (exit {proc.wait()})")


def _masks(dataset, field):
    return {s.id: s[field].get_mask() for s in dataset if s[field] is not None}


def test_interrupted_apply_says_what_was_written_and_resumes(saved, source, capsys):
    proc = _start_slow_apply(source, "applied")
    _wait_for_progress(proc, 3)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait() == 130, err
    assert "Traceback" not in err and "nothing more was written" not in err
    source.reload()  # the field was added by the other process
    written = len(source.exists("applied"))
    assert written >= 3
    assert (f"interrupted: {written} target(s) hold labels of concept 'red_disc' in 'applied' (kept); run the same "
            "command with --resume to finish") in err
    assert source.exists("applied").values("applied.concept_name") == ["red_disc"] * written
    assert fo.list_datasets(glob_patt=SCRATCH) == []  # the scratch dataset went with the interrupted run
    capsys.readouterr()
    assert main(["concepts", "apply", "red_disc", "--dataset", source.name, "--pred-field", "applied", "--resume",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == written and summary["segmented"] + summary["skipped"] == len(source) == 12
    library.apply("red_disc", source, "whole")  # the same concept, uninterrupted
    resumed, whole = _masks(source, "applied"), _masks(source, "whole")
    assert resumed.keys() == whole.keys() and all(np.array_equal(resumed[k], whole[k]) for k in whole)
    assert source.values("applied.concept_name") == ["red_disc"] * 12
    assert fo.list_datasets(glob_patt=SCRATCH) == []


def test_interrupted_before_any_label_says_nothing_was_written(saved, source, monkeypatch):
    from conceptseg.runs import writing

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writing, "write_labels", stop)
    with pytest.raises(library.ApplyInterrupted, match="nothing was written into 'applied'"):
        library.apply("red_disc", source, "applied")
    assert fo.list_datasets(glob_patt=SCRATCH) == []


def test_killed_apply_leaves_no_scratch_dataset_and_resumes(saved, source, capsys):
    proc = _start_slow_apply(source, "applied")
    _wait_for_progress(proc, 2)
    proc.kill()  # kill -9: no finally runs
    proc.wait()
    proc.stderr.close()
    left = fo.list_datasets(glob_patt=SCRATCH)
    assert len(left) == 1 and left[0].startswith(library.SCRATCH_PREFIX + "red_disc-")
    capsys.readouterr()
    assert main(["concepts", "apply", "red_disc", "--dataset", source.name, "--pred-field", "applied", "--resume",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["segmented"] + summary["skipped"] == 12
    assert fo.list_datasets(glob_patt=SCRATCH) == []  # the killed apply's scratch dataset was removed
    assert source.values("applied.concept_name") == ["red_disc"] * 12


def test_resume_refuses_a_concept_changed_since(saved, source, capsys):
    proc = _start_slow_apply(source, "applied")
    _wait_for_progress(proc, 2)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    library.save("red_disc", source.match_tags("demo"), "gt", classes=["blue"], route="appearance", overwrite=True)
    source.reload()  # the field was added by the other process
    before = source.values("applied.mask_path")
    _refused(capsys, ["concepts", "apply", "red_disc", "--dataset", source.name, "--pred-field", "applied",
                      "--resume"], "Cannot resume", "pass overwrite")
    assert source.values("applied.mask_path") == before
    assert fo.list_datasets(glob_patt=SCRATCH) == []


def test_a_live_applys_scratch_dataset_is_kept(saved, source):
    """Only a scratch dataset whose process is gone is removed: another apply running now keeps its own."""
    from conceptseg.runs.locks import this_process

    live = fo.Dataset(library.SCRATCH_PREFIX + "red_disc-live0000")
    live.info = {"conceptseg_scratch": this_process()}  # this very process: alive
    live.save()
    gone = fo.Dataset(library.SCRATCH_PREFIX + "red_disc-gone0000")
    gone.info = {"conceptseg_scratch": dict(this_process(), pid=2**22 + 7)}  # no such process
    gone.save()
    try:
        assert gone.name in library.remove_stale_scratch()
        assert live.name in fo.list_datasets(glob_patt=SCRATCH) and gone.name not in fo.list_datasets()
    finally:
        live.delete()


# ---- manifests: one sentence, never half-used ---------------------------------------------


def _drop_threshold(record):
    del record["settings"]["threshold"]


def _name_with_newline(record):
    record["name"] = "red_disc\n"


def _member_with_newline(record):
    record["demonstrations"][0]["image"] = "demos/000.png\n"


MALFORMED = [
    (lambda r: r.update(demonstrations=["x"]), "demonstration 0 must be an object"),
    (lambda r: r.update(demonstrations=5), "'demonstrations' must be a non-empty list"),
    (lambda r: r.update(demonstrations={}), "'demonstrations' must be a non-empty list"),
    (lambda r: r.update(demonstrations=[]), "'demonstrations' must be a non-empty list"),
    (_drop_threshold, "'settings.threshold' is missing"),
    (lambda r: r["settings"].update(threshold="0.6"), "'settings.threshold' must be a number"),
    (lambda r: r["settings"].update(threshold=7), "'settings.threshold' must be in [0.0, 1.0]"),
    (lambda r: r.update(classes="disc"), "'classes' must be a list of class names"),
    (lambda r: r.update(settings=None), "'settings' must be an object"),
    (lambda r: r.update(provenance=[]), "'provenance' must be an object"),
    (lambda r: r.update(format=99), "'format' is 99"),
    (lambda r: 5, "the record must be a JSON object"),
    (_name_with_newline, "is not allowed"),
    (_member_with_newline, "must be a relative file name"),
]


@pytest.mark.parametrize("edit,message", MALFORMED)
def test_malformed_manifest_in_a_zip_is_one_sentence(exported, tmp_path, lib, capsys, edit, message):
    library.delete("red_disc")
    bad = _with_record(exported, tmp_path / "bad.zip", edit)
    err = _refused(capsys, ["concepts", "import", bad], "concept.json in the zip is not a concept record")
    assert message in err
    assert _library_entries(lib) == []


@pytest.mark.parametrize("edit,message", MALFORMED)
def test_malformed_manifest_in_the_library_is_one_sentence(saved, source, lib, capsys, edit, message):
    path = _record_path(lib, "red_disc")
    record = json.loads(path.read_text())
    changed = edit(record)
    path.write_text(json.dumps(record if changed is None else changed))
    for argv in (["concepts", "show", "red_disc"],
                 ["concepts", "apply", "red_disc", "--dataset", source.name, "--pred-field", "applied"],
                 ["concepts", "export", "red_disc", str(lib.parent / "out.zip")]):
        err = _refused(capsys, argv, "Concept 'red_disc' is damaged")
        assert message in err
    assert not source.has_field("applied") and not (lib.parent / "out.zip").exists()


def test_classes_given_as_a_string_are_not_four_classes(exported, tmp_path):
    with pytest.raises(ConceptSegError, match="'classes' must be a list of class names, got str 'disc'"):
        library.validate_manifest({**json.loads(_zip_files(exported)["concept.json"]), "classes": "disc"})


# ---- a damaged concept does not break the library ----------------------------------------


def test_one_corrupt_concept_json_names_itself_and_can_be_deleted(saved, source, lib, capsys):
    library.save("blue_square", source.match_tags("demo"), "gt", classes=["blue"], route="appearance")
    _record_path(lib, "red_disc").write_text('{"name": "red_disc", "demonstrations": [')
    capsys.readouterr()
    assert main(["concepts", "list"]) == 0
    out = capsys.readouterr()
    assert "blue_square" in out.out and "red_disc" not in out.out
    assert out.err.startswith("broken: red_disc: Concept 'red_disc' is damaged") and "not valid JSON" in out.err
    assert "conceptseg concepts delete red_disc" in out.err and "Traceback" not in out.err
    assert main(["concepts", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listed["concepts"]] == ["blue_square"] and list(listed["broken"]) == ["red_disc"]
    assert main(["concepts", "delete", "red_disc"]) == 0
    assert _library_entries(lib) == ["blue_square"]
    _refused(capsys, ["concepts", "delete", "red_disc"], "No saved concept 'red_disc'", "blue_square")


def test_library_dir_pointing_at_a_file(source, tmp_path, monkeypatch, capsys, exported):
    exported_zip = tmp_path / "keep.zip"
    os.replace(exported, exported_zip)
    afile = tmp_path / "notes.txt"
    afile.write_text("my notes")
    monkeypatch.setenv("CONCEPTSEG_LIBRARY_DIR", str(afile))
    save = ["concepts", "save", "x", "--dataset", source.name, "--demo-tag", "demo", "--mask-field", "gt",
            "--classes", "red", "--route", "appearance"]
    for argv in (["concepts", "list"], ["concepts", "show", "red_disc"], ["concepts", "delete", "red_disc"],
                 ["concepts", "import", str(exported_zip)], save,
                 ["concepts", "apply", "red_disc", "--dataset", source.name, "--pred-field", "p"]):
        _refused(capsys, argv, "is a file, not a directory", "CONCEPTSEG_LIBRARY_DIR")
    assert afile.read_text() == "my notes"
    monkeypatch.setenv("CONCEPTSEG_LIBRARY_DIR", str(afile / "lib"))  # a file on the way
    _refused(capsys, save, "Cannot create the concept library", "CONCEPTSEG_LIBRARY_DIR")
    _refused(capsys, ["concepts", "import", str(exported_zip)], "Cannot create the concept library")
    assert afile.read_text() == "my notes"


# An import that, once its zip is validated, waits for the test's "go" (a barrier across processes,
# without sleeps): the installs then start at the same moment.
_GATED_CLI = """
import sys
from conceptseg.runs.library import zipfiles
validate = zipfiles.validate_zip
def gated(path):
    out = validate(path)
    print("ready", flush=True)
    sys.stdin.readline()
    return out
zipfiles.validate_zip = gated
from conceptseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _demos(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != "concept.json"}


def test_concurrent_imports_with_overwrite_leave_one_whole_concept(saved, source, tmp_path, lib):
    red = library.export("red_disc", str(tmp_path / "red.zip"))
    library.save("red_disc", source.match_tags("demo"), "gt", classes=["blue"], route="appearance", overwrite=True)
    blue = library.export("red_disc", str(tmp_path / "blue.zip"))
    contents = {path: _zip_files(path) for path in (red, blue)}
    assert _demos(contents[red]) != _demos(contents[blue])  # blue's masks are other pixels
    for _ in range(6):
        procs = [subprocess.Popen([sys.executable, "-c", _GATED_CLI, "concepts", "import", path, "--overwrite"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=_subprocess_env())
                 for path in (red, blue, red, blue)]
        for p in procs:  # every one validated its zip and stands before the install
            assert p.stdout.readline() == "ready\n", p.communicate()[1]
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [(p.wait(), *p.communicate()) for p in procs]
        for code, out, err in results:
            assert code == 0 and "Traceback" not in err, err
            assert out.startswith("imported 'red_disc'")
        assert _library_entries(lib) == ["red_disc"]  # no half-moved or staging directory beside it
        now = _zip_files(library.export("red_disc", str(tmp_path / "now.zip"), overwrite=True))
        classes = library.load("red_disc")["classes"]
        assert (classes, _demos(now)) in ((["red"], _demos(contents[red])), (["blue"], _demos(contents[blue])))


# ---- names matched whole, BOMs kept out of the prompt ----------------------------------------


def test_names_are_matched_whole():
    for bad in ("abc\n", "red_disc\n", "\nabc"):
        with pytest.raises(ConceptSegError, match="not allowed"):
            library.check_name(bad)
    from conceptseg.runs.names import check_field_name

    with pytest.raises(ConceptSegError):
        check_field_name("pred\n")
    assert not library.HUB_ID.fullmatch("org/model\n") and library.HUB_ID.fullmatch("org/model")


def test_a_utf8_bom_does_not_reach_the_prompt(exported, source, tmp_path, lib):
    files = _zip_files(exported)
    library.delete("red_disc")
    record = json.loads(files["concept.json"])
    record["classes"] = ["\ufeffred"]
    record["settings"]["classes"] = ["\ufeffred"]
    files["concept.json"] = b"\xef\xbb\xbf" + json.dumps(record, ensure_ascii=False).encode()
    library.import_zip(_write_zip(tmp_path / "bom.zip", files))
    loaded = library.load("red_disc")
    assert loaded["classes"] == ["red"] and loaded["settings"]["classes"] == ["red"]
    summary = library.apply("red_disc", source.match_tags("demo", bool=False), "applied")
    assert summary["segmented"] == 9
    run = source.get_run_info(summary["run_key"]).config
    assert run.concept == "red" and source.mask_targets["applied"] == {1: "red"}
    # A BOM on a class given to save is dropped too.
    record = library.save("bom_save", source.match_tags("demo"), "gt", classes=["\ufeffred"], route="appearance")
    assert record["classes"] == ["red"] and "\ufeff" not in json.dumps(record)


# ---- save verifies as segment does --------------------------------------------------------


def test_save_verifies_at_segments_threshold_and_takes_the_object_route(source, capsys):
    from conceptseg.routes.router import DEFAULT_THRESHOLD

    assert main(["concepts", "save", "red_disc", "--dataset", source.name, "--demo-tag", "demo", "--mask-field", "gt",
                 "--classes", "red"]) == 0
    assert library.load("red_disc")["settings"]["threshold"] == DEFAULT_THRESHOLD == 0.6
    assert main(["concepts", "save", "red_obj", "--dataset", source.name, "--demo-tag", "demo", "--mask-field", "gt",
                 "--classes", "red", "--route", "object"]) == 0
    record = library.load("red_obj")
    assert record["route"] == "object" and record["settings"]["route"] == "object"
    assert "route object" in capsys.readouterr().out
