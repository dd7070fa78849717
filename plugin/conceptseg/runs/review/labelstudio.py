"""Label Studio over its REST API: what FiftyOne's backend leaves to us.

FiftyOne's ``annotate(backend="labelstudio")`` creates the project, uploads the images as tasks
and keeps the task -> sample map in the annotation run's results. This module does the rest:
it checks the server and the key before anything is written, makes sure every task carries its
pre-annotation (some label-studio-sdk versions create none, so the user would start from an
empty mask), and reads back what the annotators did with each task (submitted, skipped, erased)
before FiftyOne's ``load_annotations`` writes anything.

The API key goes into the request header only; no message here names it.
"""

from __future__ import annotations

import numpy as np

from conceptseg.runs.review.record import ReviewError

TIMEOUT_S = 60  # an upload of 100 images answers in a few seconds here
PAGE_SIZE = 100
MODEL_VERSION = "conceptseg"


class AnnotationError(ReviewError):
    """The annotation tool cannot be reached, refuses us, or what it holds cannot be brought home."""


def brush_result(mask: np.ndarray, name: str, from_name: str, result_id: str) -> dict:
    """A Label Studio brush region of ``mask`` (HxW bool) labelled ``name``, as its editor saves one.

    The editor encodes the region's RGBA canvas (alpha 255 where painted) with its own run-length
    format, which label-studio-sdk's converter writes.
    """
    from label_studio_sdk.converter import brush

    height, width = mask.shape
    return {
        "id": result_id, "from_name": from_name, "to_name": "image", "type": "brushlabels",
        "original_width": int(width), "original_height": int(height), "image_rotation": 0,
        "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [name]},
    }


def result_mask(result: dict) -> np.ndarray | None:
    """The HxW bool mask of a brush region (its alpha channel), or None for another kind of region."""
    from label_studio_sdk.converter import brush

    value = result.get("value") or {}
    if result.get("type") != "brushlabels" or value.get("format") != "rle":
        return None
    rgba = brush.decode_rle(value["rle"]).reshape(result["original_height"], result["original_width"], 4)
    return rgba[..., 3] > 0


def task_state(task: dict) -> str:
    """What the annotators did with a task: "annotated", "empty" (submitted with no pixels), "skipped", or
    "empty_region" (one of its brush regions has no pixels: FiftyOne's loader fails on it).

    The newest annotation counts, as FiftyOne's loader takes it; a cancelled one (the editor's
    Skip) or none at all is "skipped" (FiftyOne would load the pre-annotation for it).
    """
    annotations = sorted(task.get("annotations") or [], key=lambda a: a.get("updated_at") or "")
    if not annotations or annotations[-1].get("was_cancelled"):
        return "skipped"
    painted = [m.any() for m in (result_mask(r) for r in annotations[-1].get("result") or []) if m is not None]
    if not any(painted):
        return "empty"
    return "annotated" if all(painted) else "empty_region"


class LabelStudio:
    """A Label Studio server at ``url`` with a (legacy) API token; every failure is an AnnotationError."""

    def __init__(self, url: str, api_key: str):
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Token {api_key}"}

    def request(self, method: str, path: str, **kwargs):
        """The response to ``method path``; an unreachable server or a refused key raises one sentence."""
        import requests

        try:
            response = requests.request(method, self.url + path, headers=self._headers, timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as e:
            raise AnnotationError(
                f"Label Studio at {self.url} does not answer ({type(e).__name__}): start it, or give its address "
                "(--url, or FIFTYONE_LABELSTUDIO_URL); nothing was written."
            ) from None
        if response.status_code in (401, 403):
            raise AnnotationError(
                f"Label Studio at {self.url} refused the API key ({response.status_code}): set the key of your "
                "account there (Account & Settings > Legacy Token) as FIFTYONE_LABELSTUDIO_API_KEY or the "
                "plugin's secret; nothing was written."
            )
        return response

    def check(self) -> None:
        """The server answers and accepts the key."""
        response = self.request("GET", "/api/current-user/whoami")
        if response.status_code != 200:
            raise AnnotationError(f"Label Studio at {self.url} answered {response.status_code} when asked who we "
                                  "are: is this a Label Studio server?")

    def project(self, project_id: int, anno_key: str) -> dict:
        """The project, or one sentence when it was deleted on the server."""
        response = self.request("GET", f"/api/projects/{project_id}")
        if response.status_code == 404:
            raise AnnotationError(
                f"The Label Studio project {project_id} of annotation run {anno_key!r} was deleted on the server, "
                "and its corrections with it: nothing was loaded; drop the run (--cleanup) and send the targets again."
            )
        response.raise_for_status()
        return response.json()

    def tasks(self, project_id: int) -> dict[int, dict]:
        """Every task of the project by id, with its annotations and predictions."""
        out, page = {}, 1
        while True:
            response = self.request("GET", "/api/tasks", params={"project": project_id, "fields": "all",
                                                                 "page": page, "page_size": PAGE_SIZE})
            if response.status_code == 404 and out:  # past the last page
                break
            response.raise_for_status()
            body = response.json()
            for task in body["tasks"]:
                out[task["id"]] = task
            if not body["tasks"] or len(out) >= body.get("total", 0):
                break
            page += 1
        return out

    def add_prediction(self, task_id: int, result: list[dict], score: float | None) -> None:
        body = {"task": task_id, "result": result, "model_version": MODEL_VERSION}
        if score is not None:
            body["score"] = score
        response = self.request("POST", "/api/predictions", json=body)
        if response.status_code >= 300:
            raise AnnotationError(f"Label Studio refused the pre-annotation of task {task_id} "
                                  f"({response.status_code}: {response.text[:200]}).")

    def delete_project(self, project_id: int) -> bool:
        """Deletes the project and its tasks; False when it was gone already."""
        response = self.request("DELETE", f"/api/projects/{project_id}")
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return True
