"""The App in a real browser: segment by demonstration from the operator browser, then both panels.

Needs Debian's ``chromium`` at /usr/bin/chromium and the ``playwright`` package (no browser
download): ``apt-get install -y chromium`` and ``.venv/bin/pip install playwright``. Skipped
only when chromium is absent outside CI; with ``CI`` set it must run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest


CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip(f"no Debian chromium at {CHROMIUM} (apt-get install -y chromium); CI runs this test",
                allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402 - after the skip

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SERVER_START_S = 90  # a cold server imports FiftyOne and the plugin: about 5-10 s here
RUN_S = 120  # 13 targets on the appearance route: about 10 s here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, server: subprocess.Popen, log_path) -> None:
    """Retries GET /fiftyone until it answers, the server dies, or the deadline passes."""
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(url + "/fiftyone", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        try:  # the pause between tries doubles as a check that the server is still alive
            server.wait(timeout=0.5)
            raise RuntimeError(f"the App server exited with {server.returncode}:\n{log_path.read_text()}")
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the App server did not answer within {SERVER_START_S} s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def server_library(tmp_path_factory):
    """The concept library the App server of this module uses (never the user's)."""
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="module")
def app_server(plugin_installed, server_library, tmp_path_factory):
    """A FiftyOne App server on a free loopback port, sharing this process's private database.

    One per module: each journey opens its own browser (its own App session) on its own
    datasets, and a server start costs about 10 s of CPU.
    """
    # os.environ carries FIFTYONE_DATABASE_URI of the session's own mongod (tests/conftest.py,
    # conceptseg.testing.db): the server joins it, never a FiftyOne database of the user's.
    assert os.environ["FIFTYONE_DATABASE_URI"].startswith("mongodb://127.0.0.1:")
    port = _free_port()
    main = os.path.join(os.path.dirname(fo.__file__), "server", "main.py")
    log_path = tmp_path_factory.mktemp("app") / "server.log"
    with open(log_path, "w") as log:
        # Never --clean_start: it deletes every dataset in the database.
        server = subprocess.Popen([sys.executable, main, "--address", "127.0.0.1", "--port", str(port)],
                                  env=dict(os.environ, CONCEPTSEG_LIBRARY_DIR=str(server_library)),
                                  stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, server, log_path)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def app_url(app_server, nuclei_dataset):
    """The App server's URL, once this journey's demo dataset exists."""
    return app_server


@pytest.fixture
def page(app_url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        # Wide enough for the grid's toolbar to keep the operator browser's button clear of "Sort by" with a
        # panel open beside the grid.
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=30_000)  # a loaded CI machine renders panels slower than this one
        yield page
        browser.close()


# Every journey's screenshots, to be looked at (CONCEPTSEG_SHOTS moves them).
SHOTS = Path(os.environ.get("CONCEPTSEG_SHOTS", "/tmp/app-shots"))
# What the App shows for an uncaught operator error; none of our journeys may show it.
ERROR_TEXTS = ("Traceback", "Uncaught", "Operator Error", "Operator error", "Failed to execute")


def _shot(page: Page, tmp_path, name: str) -> None:
    """A screenshot of the whole window under SHOTS (tmp_path is kept for the callers' signature)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    assert_no_error_box(page)


def assert_no_error_box(page: Page) -> None:
    """No traceback or uncaught-error text anywhere on the page."""
    text = page.locator("body").inner_text()
    shown = [t for t in ERROR_TEXTS if t in text]
    assert not shown, f"the page shows {shown}:\n{text[-3000:]}"


def _open_panel(page: Page, name: str):
    page.get_by_title("New panel").first.click()
    page.locator(f"[data-cy=new-panel-option-{name}]").click()
    return page.locator(f"[data-cy=panel-content-{name}]")


def test_segment_and_evaluate_with_defaults_then_both_panels(app_url, page, nuclei_dataset, tmp_path):
    page.goto(f"{app_url}/datasets/{nuclei_dataset.name}?view=nuclei")
    expect(page.locator("[data-cy=looker]").first).to_be_visible()
    # The "Explore Enterprise" popover covers the grid's top right and swallows clicks.
    page.get_by_role("button", name="Dismiss").click()
    _select_demonstrations(page)
    _segment_by_demonstration(page, tmp_path)
    nuclei_dataset.reload()  # the server process wrote the field and the run record
    assert len(nuclei_dataset.exists("predictions")) == 13
    assert set(nuclei_dataset.distinct("predictions_instances.detections.label")) == {"nucleus"}  # the concept's name

    rules = _open_panel(page, "concept_rules")
    expect(rules).to_contain_text("to rank its worst samples")
    _shot(page, tmp_path, "1a-rules-before-evaluation.png")
    # Evaluate with the form's defaults while the demonstrations are still selected: it scores the run's targets.
    _evaluate_with_defaults(page, tmp_path)
    # The open panel shows the evaluation without anyone switching runs.
    expect(rules.get_by_role("button", name="Open worst samples")).to_be_visible()
    expect(rules).not_to_contain_text("to rank its worst samples")
    _check_concept_rules(page, nuclei_dataset, tmp_path)
    _check_modal_concept_rules(page, nuclei_dataset, tmp_path)
    _check_concept_evaluation(page, tmp_path)


def _run_operator(page: Page, label: str):
    """Opens ``label``'s form from the operator browser; returns the prompt."""
    # The browser's key (`), not its button: with a panel beside the grid, "Sort by" covers the button.
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("`")
    page.locator("[data-cy=operators-browser-search]").fill(label)
    page.locator("[data-cy=operators-browser]").get_by_text(label, exact=True).click()
    return page.locator("[data-cy=operators-prompt-modal]")


def _finish(page: Page, message: str, tmp_path, shot: str) -> None:
    """Waits for the operator's dialog to end in ``message`` (also a notification), looks, closes the dialog."""
    dialog = page.get_by_role("dialog").filter(has=page.get_by_role("alert").filter(has_text=message))
    expect(dialog).to_be_visible(timeout=RUN_S * 1000)
    expect(dialog.get_by_role("progressbar")).to_have_count(0)  # the progress gave way to the sentence
    _shot(page, tmp_path, shot)
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_have_count(0)


def _evaluate_with_defaults(page: Page, tmp_path) -> None:
    prompt = _run_operator(page, "Evaluate concept segmentation")
    expect(prompt).to_contain_text("13 sample(s) with a prediction and ground truth.")
    expect(prompt.get_by_role("button", name="Execute", exact=True)).to_be_enabled()
    expect(prompt).not_to_contain_text("Required property")  # the defaults fill every required field
    _shot(page, tmp_path, "1b-evaluate-form.png")
    prompt.get_by_role("button", name="Execute", exact=True).click()
    _finish(page, "Scored 13 samples of 'predictions' as evaluation 'eval_predictions'", tmp_path,
            "1c-evaluate-done.png")


def _select_demonstrations(page: Page) -> None:
    """Shows sample tags, then ticks the three tiles tagged "demo"."""
    page.locator("[data-cy=checkbox-tags]").click()
    demos = page.locator("[data-cy=looker]").filter(has_text="demo")
    expect(demos).to_have_count(3)
    for i in range(3):
        demos.nth(i).click(position={"x": 10, "y": 5})  # the tile's checkbox corner
    expect(page.locator("[data-cy=action-manage-selected]").first).to_have_text("3")


def _open_segment_form(page: Page):
    return _run_operator(page, "Segment by demonstration")


def _segment_by_demonstration(page: Page, tmp_path) -> None:
    """Runs the operator with the form's defaults only: the target is the current view (16 tiles)."""
    prompt = _open_segment_form(page)
    expect(prompt).to_contain_text("3 demonstration(s), masks from 'ground_truth'.")
    expect(prompt).to_contain_text("13 target(s). Estimate: ~13 targets")
    _shot(page, tmp_path, "1-segment-form.png")
    prompt.get_by_role("button", name="Execute", exact=True).click()
    _shot(page, tmp_path, "1-progress.png")  # the live progress dialog (a generator run), while it lasts
    # It gives way to the sentence saying what was written where.
    _finish(page, "Segmented 13 targets with the appearance route (verification 0.865) into 'predictions' "
                  "(instances in 'predictions_instances').", tmp_path, "1-progress-done.png")


def _check_concept_rules(page: Page, dataset, tmp_path) -> None:
    """The grid panel shows the run's rule, route and verification, thumbnails and buttons."""
    config = dataset.get_run_info("conceptseg_predictions").config
    rules = page.locator("[data-cy=panel-content-concept_rules]")
    expect(rules).to_contain_text(config.rule)
    expect(rules).to_contain_text(f"Route: appearance · Verification: {config.verification:.3f} (verified)")
    expect(rules.locator("img")).to_have_count(3)
    # Thumbnails come through the App's own /media route: each must have loaded.
    page.wait_for_function("""() => [...document.querySelectorAll('[data-cy=panel-content-concept_rules] img')]
        .every(img => img.complete && img.naturalWidth > 0)""")
    rules.get_by_role("button", name="Show prediction vs ground truth").click()
    expect(page.locator("[data-cy=checkbox-predictions] input")).to_be_checked()
    expect(rules.get_by_role("button", name="Open worst samples")).to_be_visible()
    _shot(page, tmp_path, "2-concept-rules.png")


def _check_modal_concept_rules(page: Page, dataset, tmp_path) -> None:
    """In the modal, the same panel speaks about the open sample's own prediction."""
    # The grid shows the view in order, so the first tile that is not a demonstration is a target.
    demo_ids = set(dataset.match_tags("demo").values("id"))
    first_target = next(i for i, id_ in enumerate(dataset.load_saved_view("nuclei").values("id"))
                        if id_ not in demo_ids)
    page.locator("[data-cy=looker]").nth(first_target).click(position={"x": 80, "y": 80})
    page.locator("[data-cy=modal] [data-cy=panel-tab-concept_rules]").click()
    modal_rules = page.locator("[data-cy=modal] [data-cy=panel-content-concept_rules]")
    expect(modal_rules).to_contain_text("This sample")
    expect(modal_rules).to_contain_text("Cost:")
    _shot(page, tmp_path, "3-modal-concept-rules.png")
    # Close the modal by its backdrop (the content starts 40 px in; Escape is taken by the panel).
    page.locator("[data-cy=modal]").click(position={"x": 5, "y": 5})
    expect(page.locator("[data-cy=modal]")).to_have_count(0)


def _check_concept_evaluation(page: Page, tmp_path) -> None:
    """Three charts; clicking the IoU bar of "nucleus" loads the view of its 13 scored samples."""
    evaluation = _open_panel(page, "concept_evaluation")
    expect(evaluation).to_contain_text("on 13 samples")
    expect(evaluation.locator(".js-plotly-plot")).to_have_count(3)
    expect(evaluation.locator(".js-plotly-plot").first).to_be_visible()
    _shot(page, tmp_path, "4-concept-evaluation.png")
    evaluation.locator(".js-plotly-plot").first.locator(".bars path").last.click(force=True)
    page.locator("[data-cy=panel-tab-samples]").first.click()  # the grid tab shares the evaluation's space
    expect(page.locator("[data-cy=entry-counts]")).to_have_text("13 samples")
    _shot(page, tmp_path, "5-bar-clicked.png")


@pytest.fixture
def two_class_dataset(name, tmp_path):
    from conceptseg.datasets import two_classes

    dataset, truth = two_classes.build(name, str(tmp_path / "media"))
    return dataset, truth


def test_a_class_picked_on_a_multi_class_dataset(app_url, page, two_class_dataset, tmp_path):
    dataset, truth = two_class_dataset
    page.goto(f"{app_url}/datasets/{dataset.name}")
    expect(page.locator("[data-cy=looker]").first).to_be_visible()
    page.get_by_role("button", name="Dismiss").click()
    page.locator("[data-cy=checkbox-tags]").click()
    demos = page.locator("[data-cy=looker]").filter(has_text="demo")
    expect(demos).to_have_count(3)
    for i in range(3):
        demos.nth(i).click(position={"x": 10, "y": 5})
    prompt = _open_segment_form(page)
    # the mask field defaults to the first mask field (gt): it shows two classes, so one must be picked
    expect(prompt).to_contain_text("the demonstrations show: blue, red")
    picker = prompt.locator("input[role=combobox]").first  # the classes autocomplete (dropdowns are divs)
    picker.click()
    picker.fill("red")
    _shot(page, tmp_path, "multi-class-picker.png")
    page.get_by_role("option", name="red", exact=True).click()
    expect(prompt).to_contain_text("9 target(s).")
    expect(prompt.get_by_role("button", name="Execute", exact=True)).to_be_enabled()  # the form has settled
    expect(prompt.get_by_text("Required property")).to_have_count(0)
    _shot(page, tmp_path, "multi-class-form.png")
    prompt.get_by_role("button", name="Execute", exact=True).click()
    _finish(page, "Segmented 9 targets with the appearance route", tmp_path, "multi-class-done.png")
    dataset.reload()
    ious = []
    for sample in dataset.match_tags("demo", bool=False).exists("predictions"):
        pred, red = sample.predictions.get_mask() > 0, truth[sample.id]["red"]
        if red.any():
            ious.append((pred & red).sum() / (pred | red).sum())
        assert (pred & truth[sample.id]["blue"]).sum() < 0.05 * truth[sample.id]["blue"].sum()
    assert len(ious) == 8 and np.mean(ious) >= 0.8


def test_review_by_doubt_walks_k_of_n_accept_and_reject_move_on_then_rerun(app_url, page, two_class_dataset,
                                                                          tmp_path):
    from conceptseg.runs import jobs
    from conceptseg.runs import review

    dataset, truth = two_class_dataset
    for sample in dataset.match_tags("demo", bool=False):  # red not labelled yet: accepting adds it (never over it)
        seg = np.zeros((128, 128), np.uint8)
        seg[truth[sample.id]["blue"]] = 2
        sample.gt = fo.Segmentation(mask=seg)
        sample.save()
    demos = dataset.match_tags("demo")
    # An older run on another field: the review must show its own run's field, not this one.
    jobs.segment_by_demonstration(demos, dataset, "gt", "older", classes=["blue"], route="appearance")
    jobs.segment_by_demonstration(demos, dataset, "gt", "predictions", classes=["red"], route="appearance")
    order = [t["id"] for t in review.review(dataset, "predictions")["targets"]]
    page.goto(f"{app_url}/datasets/{dataset.name}")
    expect(page.locator("[data-cy=looker]").first).to_be_visible()
    page.get_by_role("button", name="Dismiss").click()
    rules = _open_panel(page, "concept_rules")
    expect(rules).to_contain_text("round 1 · 0 accepted · 9 to review")
    expect(rules.get_by_role("button", name="Re-run with accepted")).to_be_disabled()  # nothing learned yet
    rules.get_by_role("button", name="Review by doubt").click()

    modal = page.locator("[data-cy=modal]")
    expect(modal).to_be_visible()
    modal.locator("[data-cy=panel-tab-concept_rules]").click()
    modal_rules = modal.locator("[data-cy=panel-content-concept_rules]")
    expect(modal_rules).to_contain_text("Review: 1 of 9 by doubt · 9 still open")
    expect(modal_rules.get_by_role("img", name="this sample's prediction")).to_be_visible()
    # The grid shows the reviewed run's field and its ground truth, not the older run's; so does the modal once
    # the App reads the dataset's default fields again (FiftyOne 1.22.1's set_active_fields reaches only the grid's).
    dataset.reload()
    assert list(dataset.app_config.active_fields.paths) == ["predictions", "gt"]
    page.reload()
    expect(modal_rules).to_contain_text("Review: 1 of 9 by doubt · 9 still open")
    expect(modal.locator("[data-cy=checkbox-predictions] input")).to_be_checked()
    expect(modal.locator("[data-cy=checkbox-gt] input")).to_be_checked()
    expect(modal.locator("[data-cy=checkbox-older_instances] input")).not_to_be_checked()
    # The sample beside the panel, as a reviewer works: the mask to judge next to Accept and Reject.
    modal.get_by_title("Split horizontally").click()
    modal.locator("[data-cy=panel-tab-sample]").or_(modal.get_by_text("Sample", exact=True)).first.click()
    _shot(page, tmp_path, "review-1-most-doubtful.png")

    modal_rules.get_by_role("button", name="Accept", exact=True).click()
    expect(page.get_by_text("Accepted 1 sample: its prediction is now ground truth in 'gt' as 'red'").first).to_be_visible()
    # Accept moved on to the next target, and the panel counts the accepted one.
    expect(modal_rules).to_contain_text("Review: 2 of 9 by doubt · 8 still open")
    expect(modal_rules).to_contain_text("round 1 · 1 accepted · 8 to review")
    _shot(page, tmp_path, "review-2-accepted-moved-on.png")

    modal_rules.get_by_role("button", name="Reject", exact=True).click()
    expect(page.get_by_text("Rejected 1 prediction (tagged conceptseg_rejected).").first).to_be_visible()
    expect(modal_rules).to_contain_text("Review: 3 of 9 by doubt · 7 still open")
    _shot(page, tmp_path, "review-3-rejected-moved-on.png")
    dataset.reload()
    assert review.ACCEPTED_TAG in dataset[order[0]].tags and review.REJECTED_TAG in dataset[order[1]].tags

    # Back on the accepted one: the modal says so and will not accept it twice.
    for k in (2, 1):  # the walk's own Previous (a sample opened by the panel has no grid arrows)
        modal_rules.get_by_role("button", name="Previous").click()
        expect(modal_rules).to_contain_text(f"Review: {k} of 9 by doubt")
    expect(modal_rules.get_by_role("button", name="Previous")).to_be_disabled()
    expect(modal_rules).to_contain_text("Review: 1 of 9 by doubt · accepted · 7 still open")
    expect(modal_rules.get_by_role("button", name="Accept", exact=True)).to_be_disabled()
    expect(modal_rules).to_contain_text("Cannot accept or reject: this sample is accepted already")
    _shot(page, tmp_path, "review-4-accepted-is-disabled.png")

    modal_rules.get_by_role("button", name="Re-run with accepted").click()
    _finish(page, "Round 2: 8 targets segmented again into 'predictions' with 4 demonstrations", tmp_path,
            "review-5-rerun-done.png")
    # The open panel moves to round 2 by itself.
    expect(modal_rules).to_contain_text("round 2 · 1 accepted · 8 to review")
    _shot(page, tmp_path, "review-6-round-2.png")
    dataset.reload()
    loop = review.review(dataset, "predictions")
    assert [r["round"] for r in loop["rounds"]] == [1, 2] and loop["rounds"][1]["accepted"] == 1


@pytest.fixture
def private_library(server_library, monkeypatch):
    """The App server's concept library, for this process too."""
    monkeypatch.setenv("CONCEPTSEG_LIBRARY_DIR", str(server_library))
    return server_library


def test_bad_input_is_refused_in_the_form_then_save_apply_review_update_and_delete(private_library, app_url, page, nuclei_dataset,
                                                                     tmp_path):
    page.goto(f"{app_url}/datasets/{nuclei_dataset.name}?view=nuclei")
    expect(page.locator("[data-cy=looker]").first).to_be_visible()
    page.get_by_role("button", name="Dismiss").click()
    _select_demonstrations(page)
    rules = _open_panel(page, "concept_rules")
    expect(rules).to_contain_text("No ConceptSeg run on this dataset yet")

    # An output field that is no field name is refused before Execute, in one sentence.
    prompt = _open_segment_form(page)
    prompt.locator("input[value=predictions]").fill("a.b")
    expect(prompt).to_contain_text("The output field name 'a.b' is not allowed: use letters, digits and underscores")
    expect(prompt.get_by_role("button", name="Execute", exact=True)).to_be_disabled()
    _shot(page, tmp_path, "loop-1-output-field-refused.png")
    prompt.get_by_role("button", name="Cancel").click()

    # Save the concept the selected demonstrations show.
    prompt = _run_operator(page, "Save concept")
    expect(prompt).to_contain_text("3 demonstration(s) selected.")
    prompt.get_by_role("textbox").first.fill("nuclei_demo")
    expect(prompt.get_by_role("button", name="Execute", exact=True)).to_be_enabled()
    _shot(page, tmp_path, "loop-2-save-form.png")
    prompt.get_by_role("button", name="Execute", exact=True).click()
    _finish(page, "Saved concept 'nuclei_demo' from 3 demonstrations (appearance route, verification 0.", tmp_path,
            "loop-3-saved.png")
    assert (private_library / "nuclei_demo").is_dir()

    # Apply it to the current view: the form counts the targets; the open panel shows the new run by itself.
    prompt = _run_operator(page, "Apply concept")
    expect(prompt).to_contain_text("16 target(s) to segment.")
    prompt.locator("input[value=predictions]").fill("applied")
    expect(prompt.get_by_role("button", name="Execute", exact=True)).to_be_enabled()
    _shot(page, tmp_path, "loop-4-apply-form.png")
    prompt.get_by_role("button", name="Execute", exact=True).click()
    _finish(page, "Applied concept 'nuclei_demo' to 16 targets into 'applied' (appearance route).", tmp_path,
            "loop-5-applied.png")
    expect(rules).to_contain_text("conceptseg_applied")
    expect(rules).to_contain_text("Segmented: 16 targets")
    _shot(page, tmp_path, "loop-6-rules-show-the-applied-run.png")
    nuclei_dataset.reload()
    assert set(nuclei_dataset.distinct("applied.concept_name")) == {"nuclei_demo"}

    # Review the applied run: its first target has ground truth already, so Accept says why and Accept and
    # replace puts the prediction in its place.
    rules.get_by_role("button", name="Review by doubt").click()
    modal = page.locator("[data-cy=modal]")
    expect(modal).to_be_visible()
    modal.locator("[data-cy=panel-tab-concept_rules]").click()
    modal_rules = modal.locator("[data-cy=panel-content-concept_rules]")
    expect(modal_rules).to_contain_text("Review: 1 of 16 by doubt")
    expect(modal_rules).to_contain_text("This sample has ground truth of the concept's class already")
    expect(modal_rules.get_by_role("button", name="Accept", exact=True)).to_be_disabled()
    # The mask to judge is drawn in the panel (the modal's sidebar may not list the new field yet).
    expect(modal_rules.get_by_role("img", name="this sample's prediction")).to_be_visible()
    _shot(page, tmp_path, "loop-7-review-applied-run.png")
    modal_rules.get_by_role("button", name="Accept and replace").click()
    expect(page.get_by_text("Accepted 1 sample: its prediction is now ground truth in 'ground_truth'").first
           ).to_be_visible()
    expect(modal_rules).to_contain_text("Review: 2 of 16 by doubt")
    page.mouse.click(10, 600)  # the backdrop beside the modal closes it (Escape goes to a focused panel button)
    expect(modal).to_have_count(0)

    # The accepted sample makes the saved concept's version 2; version 1 stays applicable.
    prompt = _run_operator(page, "Update concept")
    expect(prompt).to_contain_text("Adds 1 accepted and 0 absent sample(s) to 'nuclei_demo' as version 2")
    _shot(page, tmp_path, "loop-8-update-form.png")
    prompt.get_by_role("button", name="Execute", exact=True).click()
    _finish(page, "Saved 'nuclei_demo' version 2: 1 sample(s) added, 4 demonstrations", tmp_path,
            "loop-9-updated.png")
    from conceptseg.runs import library

    assert library.load("nuclei_demo")["version"] == 2 and library.load("nuclei_demo@1")["version"] == 1

    # Delete the run: one sentence saying what went, and the open panel empties by itself.
    prompt = _run_operator(page, "Delete concept segmentation run")
    expect(prompt).to_contain_text("Deletes 'applied', 'applied_instances' when present")
    prompt.get_by_role("button", name="Execute", exact=True).click()
    expect(page.get_by_text("Deleted 'applied', 'applied_instances', 1 run record(s) and 16 mask file(s).")).to_be_visible()
    expect(rules).to_contain_text("No ConceptSeg run on this dataset yet")
    _shot(page, tmp_path, "loop-10-deleted.png")
    nuclei_dataset.reload()
    assert not nuclei_dataset.has_field("applied")
