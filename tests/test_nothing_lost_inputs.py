"""Issue 21, the input surfaces: polylines, classes, colours, prompt templates, trainer state,
the verification threshold and Ctrl-C under an ignored SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest
import torch

from conceptseg.runs import classes as classes_
from conceptseg import cli
from conceptseg.runs import jobs
from conceptseg.runs import fiftyone_io as fio
from conceptseg.datasets import two_classes as two_class_dataset
from conceptseg.errors import ConceptSegError, DemonstrationError
from conceptseg.model.templates import MAX_TEMPLATE_CHARS, PromptTemplate, PromptTemplateError, load_prompt_template
from conceptseg.model.prompts import build_prompt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def two_classes(name, tmp_path):
    """12 scenes of red discs and blue squares; the first three tagged demo (fields gt, gt_rgb, dets)."""
    return two_class_dataset.build(name, str(tmp_path / "media"))


def _refused(capsys, argv, *words):
    """The command exits 2 with one line on stderr holding ``words``, and no traceback."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _segment_argv(dataset, field, *extra):
    return ["segment", "--dataset", dataset.name, "--demo-tag", "demo", "--mask-field", field,
            "--pred-field", "pred", "--route", "appearance", "--no-instances", *extra]


# ---- 10. open polylines are lines ---------------------------------------------------------

CRACK = [(0.05, 0.10), (0.30, 0.35), (0.45, 0.20), (0.70, 0.60), (0.95, 0.90)]  # a zigzag, not a shape


def _fiftyone_drawn(polyline, size):
    return polyline.to_segmentation(frame_size=size, target=1).get_mask() > 0


@pytest.mark.parametrize("closed,filled", [(False, False), (True, False), (True, True), (False, True)])
def test_a_polyline_is_drawn_as_fiftyone_draws_it(closed, filled):
    size = (160, 120)
    line = fo.Polyline(label="crack", points=[CRACK], closed=closed, filled=filled)
    mask = classes_.concept_mask(fo.Polylines(polylines=[line]), size)
    assert mask.shape == (120, 160)
    assert np.array_equal(mask, _fiftyone_drawn(line, size))


def test_an_open_crack_is_its_line_not_the_polygon_it_encloses():
    size = (200, 200)
    crack = fo.Polyline(label="crack", points=[CRACK], closed=False, filled=False)
    as_polygon = fo.Polyline(label="crack", points=[CRACK], closed=True, filled=True)
    line = classes_.concept_mask(fo.Polylines(polylines=[crack]), size).sum()
    area = classes_.concept_mask(fo.Polylines(polylines=[as_polygon]), size).sum()
    # a 1-px 8-connected line covers max(|dx|, |dy|) pixels per segment, plus its first point
    pts = [(round(x * 200), round(y * 200)) for x, y in CRACK]
    expected = 1 + sum(max(abs(b[0] - a[0]), abs(b[1] - a[1])) for a, b in zip(pts, pts[1:]))
    assert line == expected and area > 10 * line, (line, expected, area)


def test_filled_shapes_are_their_union():
    square = [(0.1, 0.1), (0.8, 0.1), (0.8, 0.8), (0.1, 0.8)]
    inner = [(0.3, 0.3), (0.5, 0.3), (0.5, 0.5), (0.3, 0.5)]
    mask = classes_.concept_mask(fo.Polyline(label="a", points=[square, inner], filled=True, closed=True), (50, 50))
    assert mask[20, 20]  # inside both: not a hole


def test_open_polyline_demonstrations_are_read_as_lines(two_classes):
    dataset, _ = two_classes
    for sample in dataset.match_tags("demo"):
        sample["cracks"] = fo.Polylines(polylines=[fo.Polyline(label="crack", points=[CRACK])])
        sample.save()
    demos, concept = fio.read_demonstrations(dataset.match_tags("demo"), "cracks")
    assert concept.classes == ["crack"] and len(demos) == 3
    for demo in demos:
        assert 100 <= demo.mask.sum() <= 300, demo.mask.sum()  # 128²: a line, not ~3,000 px of polygon


# ---- 11. classes no demonstration shows ---------------------------------------------------


def test_a_named_class_no_demonstration_shows_is_a_warning(two_classes, capsys):
    dataset, _ = two_classes
    dataset.mask_targets = {"gt": {1: "red", 2: "blue", 3: "green"}}
    dataset.save()
    assert cli.main(_segment_argv(dataset, "gt", "--classes", "red,green")) == 0
    err = capsys.readouterr().err
    assert "warning: No demonstration shows class green in 'gt'" in err and "Traceback" not in err
    run = dataset.get_run_info("conceptseg_pred").config
    assert len(run.warnings) == 1 and "green" in run.warnings[0]
    assert dataset.load_run_results("conceptseg_pred").summary["warnings"] == run.warnings


def test_the_summary_warns_and_a_run_with_every_class_shown_does_not(two_classes):
    dataset, _ = two_classes
    summary = jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "dets", "pred",
                                            classes=["red", "cat"], route="appearance", instances=False)
    assert summary["classes"] == ["red", "cat"] and "class cat" in summary["warnings"][0]
    clean = jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "dets", "pred",
                                          classes=["red"], route="appearance", instances=False, overwrite=True)
    assert clean["warnings"] == []


def test_no_named_class_shown_is_an_error(two_classes, capsys):
    dataset, _ = two_classes
    with pytest.raises(DemonstrationError, match="No demonstration shows class cat, dog"):
        jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "dets", "pred", classes=["cat", "dog"])
    _refused(capsys, _segment_argv(dataset, "dets", "--classes", "cat"), "No demonstration shows class cat")
    assert not dataset.has_field("pred") and "conceptseg_pred" not in dataset.list_runs()


@pytest.mark.parametrize("colour", ["#gg0000", "#12345z", "#ff00", "#ff00000", "#ff 000"])
@pytest.mark.parametrize("field", ["gt", "gt_rgb"])
def test_a_malformed_colour_is_one_sentence(two_classes, capsys, colour, field):
    dataset, _ = two_classes
    _refused(capsys, _segment_argv(dataset, field, "--classes", colour), repr(colour))
    assert not dataset.has_field("pred")


def test_a_well_formed_colour_and_value_still_name_classes(two_classes):
    dataset, _ = two_classes
    assert classes_.named(dataset, "gt_rgb", ["#FF0000"]).values == [(255, 0, 0)]
    assert classes_.named(dataset, "gt", ["2"]).classes == ["blue"]


# ---- prompt templates ---------------------------------------------------------------------


@pytest.mark.parametrize("text,words", [
    ("{question!z} {output_format}", ["{question!z}", "conversion"]),
    ("{question!r} {output_format}", ["{question!r}", "conversion"]),
    ("{question:>50000000} {output_format}", ["{question:>50000000}", "format"]),
    ("{question:{check}} {output_format}", ["{question:{check}}", "format"]),
    ("{question.upper} {output_format}", ["unknown placeholders {question.upper}"]),
    ("{question[0]} {output_format}", ["unknown placeholders {question[0]}"]),
    ("{0} {question} {output_format}", ["unknown placeholders {0}"]),
    ("{} {question} {output_format}", ["unknown placeholders {}"]),
    ("{question!} {output_format}", ["literal brace"]),
    ("{question}" * 9 + "{output_format}", ["{question} more than 8 times"]),
])
def test_a_template_is_validated_whole_at_load(text, words):
    with pytest.raises(PromptTemplateError) as error:
        PromptTemplate(text, "t.txt")
    for word in words:
        assert word in str(error.value), str(error.value)


def test_a_template_that_loads_renders():
    # whatever passes validation renders without error: only bare known names remain
    for text in ("{question} {output_format}", "Q: {question}\n{reference_boxes}{check}\n{output_format} {{x}}"):
        out = PromptTemplate(text).render("cat", [(0, 0, 9, 9)], True, True)
        assert "cat" in out and "<answer>" in out


def test_a_ten_megabyte_template_is_refused(tmp_path):
    path = tmp_path / "huge.txt"
    path.write_text("{question} {output_format} " + "x" * 10_000_000, encoding="utf-8")
    with pytest.raises(PromptTemplateError, match=f"at most {MAX_TEMPLATE_CHARS:,}"):
        load_prompt_template(str(path))
    with pytest.raises(PromptTemplateError, match="10,000,027 characters"):
        PromptTemplate(path.read_text(encoding="utf-8"), str(path))


def test_a_byte_order_mark_never_reaches_the_prompt(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffFind {question}.\n{output_format}\n".encode("utf-8"))
    template = load_prompt_template(str(path))
    assert template.text.startswith("Find")
    prompt = build_prompt("cat", with_references=False, template=template)
    assert prompt.startswith("Find cat.") and "\ufeff" not in prompt
    assert "\ufeff" not in PromptTemplate("\ufeff{question} {output_format}").text


def test_a_template_that_is_not_a_file_is_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    for path in (tmp_path, fifo):
        with pytest.raises(PromptTemplateError, match="not a file"):
            load_prompt_template(str(path))
    (tmp_path / "latin1.txt").write_bytes(b"{question} {output_format} \xe9")
    with pytest.raises(PromptTemplateError, match="Cannot read the prompt template"):
        load_prompt_template(str(tmp_path / "latin1.txt"))


def test_the_cli_refuses_a_bad_template_in_one_sentence(two_classes, capsys, tmp_path):
    dataset, _ = two_classes
    path = tmp_path / "bad.txt"
    path.write_text("{question:>50000000} {output_format}", encoding="utf-8")
    argv = _segment_argv(dataset, "gt", "--classes", "red", "--prompt-template", str(path))
    _refused(capsys, argv, "{question:>50000000}")
    assert not dataset.has_field("pred")


# ---- training resume reads no pickles -----------------------------------------------------


def _episode_specs():
    from conceptseg.training.episodes import TrainingSample, build_specs, in_memory
    from conceptseg.training.procedural import generate

    items = generate(["red object", "circle"], per_concept=3, size=96, seed=0)
    samples = [TrainingSample(f"{i.concept}-{k}", i.concept, in_memory(i.image, i.mask)) for k, i in enumerate(items)]
    return build_specs(samples, seed=0)


def test_trainer_state_loads_weights_only_and_resumes(tiny_bundle_dir, tmp_path):
    from conceptseg.training.checkpoints import STATE_FILE
    from conceptseg.training.config import TrainConfig
    from conceptseg.training.loop import latest_checkpoint, load_trainer_state, train

    out = str(tmp_path / "run")
    train(tiny_bundle_dir, _episode_specs(), out, TrainConfig(stage=1, steps=1, save_every=1, seed=3))
    state_file = os.path.join(latest_checkpoint(out), STATE_FILE)
    state = torch.load(state_file, weights_only=True)  # plain tensors, dicts and numbers only
    assert load_trainer_state(state_file)["step"] == 1
    assert state["step"] == 1 and isinstance(state["numpy"]["keys"], torch.Tensor)
    # the NumPy state round-trips exactly
    from conceptseg.training.loop import _numpy_rng_state, _set_numpy_rng_state

    np.random.seed(7)
    saved = _numpy_rng_state()
    expected = np.random.random(3)
    np.random.seed(8)
    _set_numpy_rng_state(saved)
    assert np.array_equal(np.random.random(3), expected)
    resumed = train(tiny_bundle_dir, _episode_specs(), out, TrainConfig(stage=1, steps=2, save_every=1, seed=3))
    assert resumed.resumed_from == 1 and resumed.steps == 2


def test_a_trainer_state_holding_pickled_objects_is_refused(tmp_path):
    from conceptseg.training.loop import load_trainer_state

    path = str(tmp_path / "trainer_state.pt")
    torch.save({"step": 1, "optimizer": {}, "torch": torch.zeros(1), "python": (), "numpy": np.random.get_state()},
               path)  # the old format: a pickled NumPy array, which weights_only refuses
    with pytest.raises(ConceptSegError, match="not a trainer state this version can read safely"):
        load_trainer_state(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ConceptSegError, match="not a conceptseg trainer state"):
        load_trainer_state(path)


# ---- the verification threshold is written once -------------------------------------------


def test_the_threshold_is_one_constant_the_operator_reads_without_the_engine():
    from conceptseg import constants
    from conceptseg.routes import router

    assert router.DEFAULT_THRESHOLD == constants.VERIFY_THRESHOLD
    args = cli.build_parser().parse_args(["segment", "--dataset", "d", "--demo-tag", "t", "--mask-field", "m",
                                          "--pred-field", "p"])
    assert args.threshold == constants.VERIFY_THRESHOLD
    # the operator module (with its package, as FiftyOne loads it) takes the constant and loads no engine
    code = (
        "import sys, importlib, importlib.util;"
        f"spec = importlib.util.spec_from_file_location('cs_plugin', {os.path.join(REPO, '__init__.py')!r},"
        f" submodule_search_locations=[{REPO!r}]);"
        "m = importlib.util.module_from_spec(spec); sys.modules['cs_plugin'] = m; spec.loader.exec_module(m);"
        "import fiftyone.operators; before = set(sys.modules);"
        "op = importlib.import_module('cs_plugin.operators.segment_by_demonstration');"
        "from conceptseg.constants import VERIFY_THRESHOLD;"
        "new = {k for k in set(sys.modules) - before};"
        "heavy = sorted({k.split('.')[0] for k in new} & {'torch', 'sklearn', 'skimage', 'transformers', 'sam2'});"
        "engine = sorted(k for k in new if k.startswith('conceptseg.') and k != 'conceptseg.constants');"
        "print(op.VERIFY_THRESHOLD is VERIFY_THRESHOLD, heavy, engine)"
    )
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "plugin"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "True [] []", out.stdout
    source = open(os.path.join(REPO, "operators", "segment_by_demonstration.py")).read()
    assert "0.6" not in source


# ---- Ctrl-C when the suite runs with SIGINT ignored -----------------------------------------


def test_ctrl_c_test_passes_under_an_ignored_sigint():
    """nohup / a background job: the suite inherits SIGINT ignored; the Ctrl-C test must still pass."""

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "plugin"))
    test = "tests/test_hostile.py::TestCommandLine::test_ctrl_c_says_how_to_resume"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", test],
                         capture_output=True, text=True, env=env, cwd=REPO, preexec_fn=ignore_sigint, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout
