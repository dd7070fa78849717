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

import fiftyone as fo
import numpy as np
import pytest

from conceptseg.evaluation import evaluate

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


@pytest.fixture
def app_url(plugin_installed, nuclei_dataset, tmp_path):
    """A FiftyOne App server on a free loopback port, sharing this process's private database."""
    # os.environ carries FIFTYONE_DATABASE_URI of the session's own mongod (tests/conftest.py,
    # conceptseg.testing_db): the server joins it, never a FiftyOne database of the user's.
    assert os.environ["FIFTYONE_DATABASE_URI"].startswith("mongodb://127.0.0.1:")
    port = _free_port()
    main = os.path.join(os.path.dirname(fo.__file__), "server", "main.py")
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        # Never --clean_start: it deletes every dataset in the database.
        server = subprocess.Popen([sys.executable, main, "--address", "127.0.0.1", "--port", str(port)],
                                  env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
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
def page(app_url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=30_000)  # a loaded CI machine renders panels slower than this one
        yield page
        browser.close()


def _shot(page: Page, tmp_path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")


def _open_panel(page: Page, name: str):
    page.get_by_title("New panel").first.click()
    page.locator(f"[data-cy=new-panel-option-{name}]").click()
    return page.locator(f"[data-cy=panel-content-{name}]")


def test_segment_from_operator_browser_then_read_both_panels(app_url, page, nuclei_dataset, tmp_path):
    page.goto(f"{app_url}/datasets/{nuclei_dataset.name}?view=nuclei")
    expect(page.locator("[data-cy=looker]").first).to_be_visible()
    # The "Explore Enterprise" popover covers the grid's top right and swallows clicks.
    page.get_by_role("button", name="Dismiss").click()
    _select_demonstrations(page)
    _segment_by_demonstration(page, tmp_path)
    nuclei_dataset.reload()  # the server process wrote the field and the run record
    assert len(nuclei_dataset.exists("predictions")) == 13

    # The evaluation form is not under test here; the panels read what the engine writes.
    # (Not foo.execute_operator: inside Playwright's event loop it returns an unawaited task.)
    evaluate(nuclei_dataset.load_saved_view("nuclei"), "predictions", "ground_truth", eval_key="ev")
    _check_concept_rules(page, nuclei_dataset, tmp_path)
    _check_modal_concept_rules(page, nuclei_dataset, tmp_path)
    _check_concept_evaluation(page, tmp_path)


def _select_demonstrations(page: Page) -> None:
    """Shows sample tags, then ticks the three tiles tagged "demo"."""
    page.locator("[data-cy=checkbox-tags]").click()
    demos = page.locator("[data-cy=looker]").filter(has_text="demo")
    expect(demos).to_have_count(3)
    for i in range(3):
        demos.nth(i).click(position={"x": 10, "y": 5})  # the tile's checkbox corner
    expect(page.locator("[data-cy=action-manage-selected]").first).to_have_text("3")


def _open_segment_form(page: Page):
    page.locator("[data-cy=action-browse-operations]").click()
    page.locator("[data-cy=operators-browser-search]").fill("Segment by demonstration")
    page.locator("[data-cy=operators-browser]").get_by_text("Segment by demonstration").click()
    return page.locator("[data-cy=operators-prompt-modal]")


def _segment_by_demonstration(page: Page, tmp_path) -> None:
    """Runs the operator with the form's defaults only: the target is the current view (16 tiles)."""
    prompt = _open_segment_form(page)
    expect(prompt).to_contain_text("3 demonstration(s), masks from 'ground_truth'.")
    expect(prompt).to_contain_text("13 target(s). Estimate: ~13 targets")
    prompt.get_by_role("button", name="Execute", exact=True).click()
    # The live progress bar (a generator run) ends at 13/13, then the success notification.
    expect(page.get_by_text("13/13 targets")).to_be_visible(timeout=RUN_S * 1000)
    expect(page.get_by_text("Segmented 13 targets with the appearance route")).to_be_visible()
    _shot(page, tmp_path, "1-progress-done.png")
    page.get_by_role("button", name="Done").click()


def _check_concept_rules(page: Page, dataset, tmp_path) -> None:
    """The grid panel shows the run's rule, route and verification, thumbnails and buttons."""
    config = dataset.get_run_info("conceptseg_predictions").config
    rules = _open_panel(page, "concept_rules")
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
    _shot(page, tmp_path, "multi-class-form.png")
    prompt.get_by_role("button", name="Execute", exact=True).click()
    expect(page.get_by_text("Segmented 9 targets with the appearance route")).to_be_visible(timeout=RUN_S * 1000)
    dataset.reload()
    ious = []
    for sample in dataset.match_tags("demo", bool=False).exists("predictions"):
        pred, red = sample.predictions.get_mask() > 0, truth[sample.id]["red"]
        if red.any():
            ious.append((pred & red).sum() / (pred | red).sum())
        assert (pred & truth[sample.id]["blue"]).sum() < 0.05 * truth[sample.id]["blue"].sum()
    assert len(ious) == 8 and np.mean(ious) >= 0.8


def test_review_opens_the_most_doubtful_target_accepts_it_and_reruns(app_url, page, two_class_dataset, tmp_path):
    from conceptseg import jobs, review

    dataset, truth = two_class_dataset
    for sample in dataset.match_tags("demo", bool=False):  # red not labelled yet: accepting adds it (never over it)
        seg = np.zeros((128, 128), np.uint8)
        seg[truth[sample.id]["blue"]] = 2
        sample.gt = fo.Segmentation(mask=seg)
        sample.save()
    jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "predictions", classes=["red"],
                                  route="appearance")
    most_doubtful = review.review(dataset, "predictions")["targets"][0]["id"]
    page.goto(f"{app_url}/datasets/{dataset.name}")
    expect(page.locator("[data-cy=looker]").first).to_be_visible()
    page.get_by_role("button", name="Dismiss").click()
    rules = _open_panel(page, "concept_rules")
    expect(rules).to_contain_text("round 1 · 0 accepted · 9 to review")
    rules.get_by_role("button", name="Review by doubt").click()
    expect(page.locator("[data-cy=modal]")).to_be_visible()
    page.locator("[data-cy=modal] [data-cy=panel-tab-concept_rules]").click()
    modal_rules = page.locator("[data-cy=modal] [data-cy=panel-content-concept_rules]")
    expect(modal_rules).to_contain_text("Doubt:")
    _shot(page, tmp_path, "review-1-most-doubtful.png")
    modal_rules.get_by_role("button", name="Accept", exact=True).click()
    expect(modal_rules).to_contain_text("round 1 · 1 accepted · 8 to review")
    modal_rules.get_by_role("button", name="Re-run with accepted").click()
    expect(modal_rules).to_contain_text("round 2 · 1 accepted · 8 to review", timeout=RUN_S * 1000)
    _shot(page, tmp_path, "review-2-round-2.png")
    dataset.reload()
    loop = review.review(dataset, "predictions")
    assert [r["round"] for r in loop["rounds"]] == [1, 2] and loop["rounds"][1]["accepted"] == 1
    assert review.ACCEPTED_TAG in dataset[most_doubtful].tags
