"""Correcting in Label Studio: send the most doubtful targets, edit a mask as the editor saves it, load it home.

Against a real Label Studio (1.23.2, from .venv-labelstudio: scripts/labelstudio_env.sh), started once
for this file on a free loopback port (conceptseg.testing.labelstudio). Without that environment
the tests skip locally and fail under CI.
"""

import json
import os

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import requests

from conceptseg.cli import main
from conceptseg.runs import review
from conceptseg.runs.review import annotate
from conceptseg.runs.review.labelstudio import result_mask
from conceptseg.testing.review_round import red_review_round
from conceptseg.testing import labelstudio as ls

PLUGIN = "@conceptseg/conceptseg-r1"


@pytest.fixture(scope="session")
def server():
    """One Label Studio for this file's tests (a file runs on one pytest-xdist worker)."""
    if ls.label_studio_binary() is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(ls.missing_reason())
    started = ls.LabelStudioServer().start()
    yield started
    started.stop()


@pytest.fixture
def key(server, monkeypatch):
    """The server's key where FiftyOne users put it (the environment), never on a command line."""
    monkeypatch.setenv("FIFTYONE_LABELSTUDIO_API_KEY", server.api_key)
    monkeypatch.setenv("FIFTYONE_LABELSTUDIO_URL", server.url)
    return server.api_key


@pytest.fixture
def loop(name, tmp_path):
    """Two-class scenes with blue squares as ground truth; "red" segmented into pred (the appearance route)."""
    return red_review_round(name, str(tmp_path / "media"), detections=False)


def test_the_server_starts_from_the_migrated_template(server):
    """scripts/labelstudio_env.sh keeps a migrated database; a server that migrated its own paid ~25 s."""
    assert os.path.isfile(os.path.join(ls.repo_root(), ls.ENV_DIR, ls.TEMPLATE_DB))
    assert "Initializing database" not in server.log()
    assert _api(server, "GET", "/api/current-user/whoami")["email"] == ls.USER


def _cli(capsys, *argv, code=0):
    assert main(list(argv)) == code, capsys.readouterr().err
    out = capsys.readouterr()
    return json.loads(out.out) if "--json" in argv and code == 0 else out.err


def _api(server, method, path, **kwargs):
    response = requests.request(method, server.url + path, headers={"Authorization": f"Token {server.api_key}"},
                                timeout=60, **kwargs)
    response.raise_for_status()
    return response.json() if response.content else None


def _tasks(server, project_id) -> dict:
    body = _api(server, "GET", "/api/tasks", params={"project": project_id, "fields": "all", "page_size": 100})
    return {t["id"]: t for t in body["tasks"]}


def _send(capsys, dataset, top=3):
    out = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--top", str(top), "--json")
    task_of = {s: t for t, s in dataset.load_annotation_results(out["anno_key"]).uploaded_tasks.items()}
    return out, task_of


def _truth_state(dataset):
    """Each sample's ground truth and tags, and the loop's accepted ids: what a refused load must not change."""
    samples = {s.id: (s.gt.get_mask().copy(), list(s.tags)) for s in dataset}
    return samples, list(review.state(dataset, "pred")["accepted"])


class TestSend:
    def test_the_most_doubtful_go_pre_annotated_with_their_predictions(self, server, key, loop, capsys):
        dataset, _ = loop
        expected = [t["id"] for t in review.review(dataset, "pred")["targets"][:3]]
        out, task_of = _send(capsys, dataset)
        assert out["ids"] == expected and out["class"] == "red" and out["tasks"] == 3
        assert out["anno_key"] in dataset.list_annotation_runs()
        assert review.state(dataset, "pred")["annotations"][-1]["anno_key"] == out["anno_key"]
        stored = json.dumps(dataset.get_annotation_info(out["anno_key"]).serialize(), default=str) + json.dumps(
            dataset.info, default=str)
        assert key not in stored  # the key stays in the environment
        project = _api(server, "GET", f"/api/projects/{out['project_id']}")
        assert 'value="red"' in project["label_config"] and "BrushLabels" in project["label_config"]
        tasks = _tasks(server, out["project_id"])
        assert set(task_of.values()) <= set(tasks) and set(task_of) == set(expected)
        for sample in dataset.select(expected):
            task = tasks[task_of[sample.id]]
            assert task["data"]["image"].endswith(os.path.basename(sample.filepath))  # FiftyOne's map holds
            assert task["predictions"], "no pre-annotation: the annotator would start from an empty mask"
            shown = np.zeros((128, 128), bool)
            for region in task["predictions"][0]["result"]:
                assert region["value"]["brushlabels"] == ["red"]
                shown |= result_mask(region)
            assert np.array_equal(shown, sample.pred.get_mask() > 0)
        assert dataset.select(expected).count("pred_corrections.detections") >= 3

    def test_where_the_sdk_creates_no_prediction_ours_are_uploaded(self, server, key, loop, capsys, monkeypatch):
        """label-studio-sdk 2.1.2 and 1.0.20 leave every task without its prediction; 2.0.19 does not.

        Their FiftyOne upload is played here by making the SDK's bulk prediction call do nothing.
        """
        from label_studio_sdk._legacy.project import Project

        monkeypatch.setattr(Project, "create_predictions", lambda self, predictions: None)
        dataset, _ = loop
        out, task_of = _send(capsys, dataset, top=2)
        assert out["predictions_uploaded"] == 2
        tasks = _tasks(server, out["project_id"])
        for sample in dataset.select(out["ids"]):
            (prediction,) = tasks[task_of[sample.id]]["predictions"]
            assert prediction["model_version"] == "conceptseg"
            assert np.isclose(prediction["score"], 1 - sample.pred["doubt"], atol=1e-3)
            (region,) = prediction["result"]
            assert region["value"]["brushlabels"] == ["red"]
            assert np.array_equal(result_mask(region), sample.pred.get_mask() > 0)

    def test_a_second_send_waits_for_the_first_to_come_home(self, key, loop, capsys):
        dataset, _ = loop
        out, _ = _send(capsys, dataset, top=2)
        err = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", code=2)
        assert "in Label Studio already" in err and out["anno_key"] in err
        _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--cleanup")
        assert out["anno_key"] not in dataset.list_annotation_runs()
        again, _ = _send(capsys, dataset, top=1)
        assert again["anno_key"] != out["anno_key"]


class TestRoundTrip:
    def test_changed_pixels_become_ground_truth_and_a_demonstration(self, server, key, loop, capsys):
        dataset, truth = loop
        out, task_of = _send(capsys, dataset)
        fixed, skipped, untouched = out["ids"]
        drawn = truth[fixed]["red"].copy()
        drawn[100:110, 5:15] = True  # pixels the prediction did not have
        drawn &= ~truth[fixed]["blue"]
        assert not np.array_equal(drawn, dataset[fixed].pred.get_mask() > 0)
        ls.submit_mask(server.url, key, task_of[fixed], drawn, "red", "pred_corrections")
        ls.skip_task(server.url, key, task_of[skipped])
        loaded = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--load", "--cleanup",
                      "--json")
        assert loaded["promoted"] == [fixed] and set(loaded["skipped"]) == {skipped, untouched}
        assert "skipped in Label Studio" in loaded["skipped"][skipped]
        sample = dataset[fixed]
        gt = sample.gt.get_mask()
        assert np.array_equal(gt == 1, drawn) and (gt[truth[fixed]["blue"]] == 2).all()  # the other class kept
        assert review.ACCEPTED_TAG in sample.tags and sample.pred["review"] == "corrected"
        assert dataset[skipped].pred_corrections is None and dataset[untouched].pred_corrections is None
        record = review.state(dataset, "pred")
        assert fixed in record["accepted"] and fixed in record["corrected"]
        assert record["annotations"][-1]["loaded"] and record["annotations"][-1]["cleaned"]
        assert loaded["cleaned"]["project_deleted"]
        with pytest.raises(requests.HTTPError):
            _api(server, "GET", f"/api/projects/{out['project_id']}")
        rerun = review.rerun(dataset, "pred")  # the loop goes on: the correction is a demonstration now
        assert rerun["round"] == 2 and fixed in dataset.get_run_info("conceptseg_pred").config.demonstration_ids


class TestNothingLost:
    def test_an_unreachable_server_is_one_sentence_and_nothing_is_written(self, key, loop, capsys, monkeypatch):
        dataset, _ = loop
        monkeypatch.setenv("FIFTYONE_LABELSTUDIO_URL", "http://127.0.0.1:9")  # discard port: nobody answers
        err = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", code=2)
        assert "does not answer" in err and err.count("\n") == 1 and key not in err
        assert not dataset.has_field("pred_corrections") and not dataset.list_annotation_runs()
        assert "annotations" not in review.state(dataset, "pred")

    def test_a_wrong_key_is_refused_before_anything_is_written(self, server, loop, capsys, monkeypatch):
        dataset, _ = loop
        monkeypatch.setenv("FIFTYONE_LABELSTUDIO_API_KEY", "not-the-key")
        err = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--url", server.url,
                   code=2)
        assert "refused the API key" in err and "not-the-key" not in err
        assert not dataset.has_field("pred_corrections") and not dataset.list_annotation_runs()

    def test_no_key_at_all_says_where_to_put_one(self, loop, monkeypatch):
        dataset, _ = loop
        monkeypatch.delenv("FIFTYONE_LABELSTUDIO_API_KEY", raising=False)
        monkeypatch.setitem(fo.annotation_config.backends, "labelstudio", {"url": "http://127.0.0.1:9"})
        with pytest.raises(annotate.AnnotationError, match="FIFTYONE_LABELSTUDIO_API_KEY"):
            annotate.send(dataset, "pred")

    def test_a_deleted_project_is_named_and_nothing_is_written(self, server, key, loop, capsys):
        dataset, _ = loop
        out, task_of = _send(capsys, dataset, top=2)
        ls.submit_mask(server.url, key, task_of[out["ids"][0]], np.ones((128, 128), bool), "red", "pred_corrections")
        before = _truth_state(dataset)
        _api(server, "DELETE", f"/api/projects/{out['project_id']}")
        err = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--load", code=2)
        assert "was deleted on the server" in err
        _assert_unchanged(dataset, before)
        _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--cleanup")  # the way out

    def test_a_task_edited_into_an_empty_mask_is_named_the_rest_proceed(self, server, key, loop, capsys):
        dataset, truth = loop
        out, task_of = _send(capsys, dataset, top=2)
        erased, fixed = out["ids"]
        ls.submit_mask(server.url, key, task_of[erased], np.zeros((128, 128), bool), "red", "pred_corrections")
        before = _truth_state(dataset)
        err = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--load", code=2)
        assert "submitted with an empty mask" in err and "nothing was loaded" in err  # nothing else submitted
        _assert_unchanged(dataset, before)
        ls.submit_mask(server.url, key, task_of[fixed], truth[fixed]["red"], "red", "pred_corrections")
        loaded = annotate.load(dataset, "pred")
        assert loaded["promoted"] == [fixed] and "empty mask" in loaded["skipped"][erased]
        assert review.ACCEPTED_TAG not in dataset[erased].tags

    def test_a_second_load_of_the_same_run_is_refused(self, server, key, loop, capsys):
        dataset, truth = loop
        out, task_of = _send(capsys, dataset, top=1)
        (only,) = out["ids"]
        ls.submit_mask(server.url, key, task_of[only], truth[only]["red"], "red", "pred_corrections")
        annotate.load(dataset, "pred")
        before = _truth_state(dataset)
        err = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--load", code=2)
        assert "was loaded already" in err
        _assert_unchanged(dataset, before)

    def test_the_prediction_field_deleted_in_between_is_named(self, server, key, loop, capsys):
        dataset, truth = loop
        out, task_of = _send(capsys, dataset, top=1)
        ls.submit_mask(server.url, key, task_of[out["ids"][0]], truth[out["ids"][0]]["red"], "red", "pred_corrections")
        dataset.delete_sample_field("pred")
        before = _truth_state(dataset)
        err = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--load", code=2)
        assert "'pred' of this run is no longer on dataset" in err
        _assert_unchanged(dataset, before)

    def test_cvat_is_named_as_not_supported_yet(self, loop, capsys):
        dataset, _ = loop
        err = _cli(capsys, "annotate", "--dataset", dataset.name, "--pred-field", "pred", "--backend", "cvat", code=2)
        assert "CVAT is not supported yet" in err


def _assert_unchanged(dataset, before):
    dataset.reload()
    (samples, accepted), (then, accepted_then) = _truth_state(dataset), before
    assert samples.keys() == then.keys() and accepted == accepted_then
    for sample_id, (mask, tags) in then.items():
        assert np.array_equal(samples[sample_id][0], mask) and samples[sample_id][1] == tags


class TestOperator:
    def test_send_then_load_from_the_app(self, plugin_installed, server, key, loop):
        dataset, truth = loop
        uri = f"{PLUGIN}/correct_most_doubtful"
        result = foo.execute_operator(uri, dataset=dataset, params={"pred_field": "pred", "step": "send", "top": 2})
        assert result.error is None, result.error
        sent = result.result
        assert len(sent["ids"]) == 2 and key not in json.dumps(sent)
        task_of = {s: t for t, s in dataset.load_annotation_results(sent["anno_key"]).uploaded_tasks.items()}
        fixed = sent["ids"][1]
        ls.submit_mask(server.url, key, task_of[fixed], truth[fixed]["red"], "red", "pred_corrections")
        result = foo.execute_operator(uri, dataset=dataset, params={"pred_field": "pred", "step": "load"})
        assert result.error is None, result.error
        assert result.result["promoted"] == [fixed] and list(result.result["skipped"]) == [sent["ids"][0]]
        assert np.array_equal(dataset[fixed].gt.get_mask() == 1, truth[fixed]["red"])


def _form(dataset, **params):
    from fiftyone.operators.executor import ExecutionContext

    request = {"dataset_name": dataset.name, "params": {"pred_field": "pred", **params}}
    return foo.get_operator(f"{PLUGIN}/correct_most_doubtful").resolve_input(
        ExecutionContext(request_params=request)).type.properties


def _refused(prop) -> str:
    assert prop.invalid, "the form lets it through"
    return prop.error_message or prop.view.label


class TestForm:
    def test_the_form_refuses_what_it_can_know(self, plugin_installed, loop, monkeypatch):
        dataset, _ = loop
        monkeypatch.delenv("FIFTYONE_LABELSTUDIO_API_KEY", raising=False)
        assert "FIFTYONE_LABELSTUDIO_API_KEY" in _refused(_form(dataset)["no_key"])
        monkeypatch.setenv("FIFTYONE_LABELSTUDIO_API_KEY", "some-key")
        form = _form(dataset)
        assert "no_key" not in form and form["step"].default == "send"
        assert _refused(_form(dataset, step="send", top=0)["top"]) == "Send at least one target."
        assert _refused(_form(dataset, step="load")["nothing_out"]).startswith("Nothing of this run is out")

    def test_with_a_run_out_the_form_offers_to_bring_it_home(self, plugin_installed, key, loop, capsys):
        dataset, _ = loop
        out, _ = _send(capsys, dataset, top=2)
        form = _form(dataset)
        assert form["step"].default == "load" and out["anno_key"] in form["out"].view.label
        assert "in Label Studio already" in _refused(_form(dataset, step="send")["pending"])


class TestEditor:
    def test_the_task_opens_in_label_studio_with_the_prediction_drawn(self, server, key, loop, capsys):
        """Label Studio's own page in Chromium (as tests/test_browser.py drives the App): log in, open the task."""
        browser_test = _browser_helpers()
        from playwright.sync_api import expect, sync_playwright

        dataset, _ = loop
        out, task_of = _send(capsys, dataset, top=2)
        most_doubtful = out["ids"][0]
        regions = len(_tasks(server, out["project_id"])[task_of[most_doubtful]]["predictions"][0]["result"])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_test.CHROMIUM, headless=True,
                                        args=browser_test.CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{server.url}/user/login/")
            page.fill("input[name=email]", ls.USER)
            page.fill("input[name=password]", ls.PASSWORD)
            page.locator("button[type=submit]").first.click()
            expect(page).not_to_have_url(f"{server.url}/user/login/")
            page.goto(f"{server.url}/projects/{out['project_id']}/data?task={task_of[most_doubtful]}")
            submit = page.get_by_role("button", name="Submit")
            expect(submit).to_be_visible(timeout=60_000)
            # The prediction's regions are listed (one per connected region of the mask), labelled with the class.
            listed = page.locator(".lsf-tree__node, [class*=outliner] [class*=item]").filter(has_text="red")
            expect(listed.first).to_be_visible()
            listed.first.click()  # selected: the editor outlines the pre-annotated mask
            page.wait_for_load_state("networkidle")
            browser_test.SHOTS.mkdir(parents=True, exist_ok=True)
            shot = browser_test.SHOTS / "annotate-labelstudio-task.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
            text = page.locator("body").inner_text()
            assert text.count("red") >= regions and "Traceback" not in text
            browser.close()


def _browser_helpers():
    """tests/test_browser.py's Chromium settings, loaded by path (test modules are not a package here)."""
    import importlib.util
    from pathlib import Path

    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium) and not os.environ.get("CI"):
        pytest.skip(f"no Debian chromium at {chromium} (apt-get install -y chromium); CI runs this test")
    spec = importlib.util.spec_from_file_location("conceptseg_browser_test", Path(__file__).with_name("test_browser.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
