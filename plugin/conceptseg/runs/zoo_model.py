"""The FiftyOne model: ConceptSeg-R1 through ``apply_model`` and the model zoo.

One model, two modes: *demonstration* (a view of samples, or a tag, whose masks show the
concept; the router picks and verifies a route once) or *query* (a text read by the
reasoning policy). Either is given at load time or set on the model before
``apply_model``, like any zoo model that loads without arguments. Under ``apply_model`` the
model records a run like the operator does (``conceptseg_<label_field>``), never segments a
demonstration, and refuses to write into the demonstrations' mask field. Images of any size
batch together: the collate function keeps them as a list.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import fiftyone.core.models as fom
import fiftyone.utils.torch as fout

from conceptseg.runs import fiftyone_io as fio
from conceptseg.errors import ConceptSegError, EmptyViewError, ImageReadError
from conceptseg.imaging import load_rgb
from conceptseg.routes.router import DEFAULT_THRESHOLD, check_batch_size
from conceptseg.types import Target

OUTPUTS = ("segmentation", "instances", "both")
NOTHING_TO_SEGMENT = (
    "The model has nothing to segment by: give demonstrations (demonstrations=<view> or "
    "demo_tag=<tag>, with mask_field=) or a text query (text=...), either when loading it "
    "(foz.load_zoo_model(name, text='the animal')) or on the model before apply_model "
    "(model.demo_tag = 'demo' or model.text = 'the animal')."
)


@dataclass
class ConceptSegModelConfig:
    """Settings of :class:`ConceptSegModel`.

    Attributes:
        bundle: a bundle directory, hub id, or a loaded Bundle; None = weight-free routes only
        demonstrations: a FiftyOne view whose ``mask_field`` masks show the concept
        demo_tag: or: samples of the target dataset with this tag are the demonstrations
        mask_field: where the demonstrations' masks are
        classes: the classes of ``mask_field`` that are the concept (None: every label)
        text: a query for every sample (query mode)
        route: "auto" or a route name (demonstration mode)
        threshold: held-out IoU a route must reach to count as verified
        concept: label of the predicted masks (default: the text, or "concept")
        output: "segmentation" (one Segmentation), "instances" (Detections) or "both"
            (a dict: fields <label_field>_segmentation and <label_field>_instances)
        batch_size: targets per policy call; None = apply_model's whole batch (its
            ``batch_size``) in one call. Labels are the same at any size.
    """

    bundle: Any = None
    demonstrations: Any = None
    demo_tag: str | None = None
    mask_field: str = "ground_truth"
    classes: list | None = None
    text: str | None = None
    route: str = "auto"
    threshold: float = DEFAULT_THRESHOLD
    concept: str | None = None
    output: str = "segmentation"
    batch_size: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ConceptSegError(f"output must be one of {', '.join(OUTPUTS)}; got {self.output!r}.")
        if self.batch_size is not None:
            check_batch_size(self.batch_size)
        self.check()

    def check(self) -> None:
        """Refuses demonstrations and a text query together (neither is fine until apply_model)."""
        if self.demonstrations is not None and self.demo_tag:
            raise ConceptSegError("Give demonstrations as a view or as a tag, not both.")
        if self.text is not None and (self.demonstrations is not None or self.demo_tag):
            raise ConceptSegError(
                "Give either demonstrations (a view or tag whose masks show the concept) or a text query, not both."
            )


def _apply_model_call():
    """(samples, label_field, output_dir) of the FiftyOne ``apply_model`` now entering this model, or None."""
    # apply_model hands a model none of its arguments, but it enters the model as a context
    # manager before the first prediction, so its frame (pinned FiftyOne 1.22) is on the stack.
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code is fom.apply_model.__code__:
            local = frame.f_locals
            return local["samples"], local["label_field"], local.get("output_dir")
        frame = frame.f_back
    return None


class ImageGetItem(fout.GetItem):
    """Reads each sample's image with the engine's reader (16-bit, RGBA, gray all handled).

    Defined in an importable module, not in the zoo source, so data-loader workers that
    spawn can unpickle it.
    """

    @property
    def required_keys(self):
        return ["filepath", "id"]

    def __call__(self, d):
        try:
            return {"image": load_rgb(d["filepath"]), "id": d["id"], "error": None}
        except ImageReadError as e:
            return {"image": None, "id": d["id"], "error": str(e)}


def collate(batch: list) -> list:
    """Keeps a batch as a list: images of different sizes cannot be stacked."""
    return batch


class ConceptSegModel(fom.Model, fom.SupportsGetItem, fom.TorchModelMixin):
    """Segments a concept, taught by demonstrations or named by a query, in each image.

    ``demonstrations``, ``demo_tag``, ``mask_field``, ``classes`` and ``text`` can be set on
    the model before ``apply_model``; the route is chosen (and verified) on first use.
    """

    def __init__(self, config: ConceptSegModelConfig):
        fom.SupportsGetItem.__init__(self)
        self.config = config
        bundle = config.bundle
        if isinstance(bundle, str):
            from conceptseg.model.checkpoint import load_bundle_cached

            bundle = load_bundle_cached(bundle)
        self._bundle = bundle
        self._fitted = None  # (router, choice, demonstration ids), built on first use
        self._run = None  # the apply_model run being recorded
        self._transforms = None
        self._preprocess = False

    media_type = "image"

    # What to segment by: settable until apply_model, each change refits.
    def _set(self, name: str, value) -> None:
        setattr(self.config, name, value)
        self.config.check()
        self._fitted = None

    demonstrations = property(lambda self: self.config.demonstrations, lambda self, v: self._set("demonstrations", v))
    demo_tag = property(lambda self: self.config.demo_tag, lambda self, v: self._set("demo_tag", v))
    mask_field = property(lambda self: self.config.mask_field, lambda self, v: self._set("mask_field", v))
    classes = property(lambda self: self.config.classes, lambda self, v: self._set("classes", v))
    text = property(lambda self: self.config.text, lambda self, v: self._set("text", v))

    @property
    def concept(self) -> str:
        return self.config.concept or self.config.text or "concept"

    @property
    def router(self):
        return self._fit()[0]

    @property
    def choice(self):
        return self._fit()[1]

    def _demonstration_view(self, dataset):
        if self.config.demonstrations is not None:
            return self.config.demonstrations
        if dataset is None:
            raise ConceptSegError(
                f"Demonstrations by tag ({self.config.demo_tag!r}) are read from the dataset apply_model "
                "runs on: use apply_model, or set model.demonstrations to a view."
            )
        view = dataset.match_tags(self.config.demo_tag)
        if len(view) == 0:
            raise EmptyViewError(
                f"No sample of {dataset.name!r} has the tag {self.config.demo_tag!r}; tag the demonstrations first."
            )
        return view

    def _fit(self, dataset=None):
        """(router, choice, demonstration ids); a tag is looked up in ``dataset`` each time."""
        from conceptseg.routes.router import RouteChoice, make_router
        from conceptseg.types import Verification

        c = self.config
        if self._fitted is not None and not (c.demo_tag and dataset is not None):
            return self._fitted
        if c.text is not None:
            router = make_router("reasoning", bundle=self._bundle, question=c.text)
            route = router.routes[0]
            route.fit([])
            choice = RouteChoice(route, [Verification(route.name)], reason="text query: nothing to verify against")
            self._fitted = (router, choice, frozenset())
        elif c.demonstrations is not None or c.demo_tag:
            view = self._demonstration_view(dataset)
            demonstrations, _ = fio.read_demonstrations(view, c.mask_field, classes=c.classes)
            router = make_router(c.route, c.threshold, bundle=self._bundle, question=c.concept)
            choice = router.choose(demonstrations)
            self._fitted = (router, choice, frozenset(view.values("id")))
        else:
            raise ConceptSegError(NOTHING_TO_SEGMENT)
        return self._fitted

    def _output_fields(self, label_field: str) -> tuple[str | None, str | None]:
        """(Segmentation field, Detections field) that apply_model writes for ``label_field``."""
        if self.config.output == "segmentation":
            return label_field, None
        if self.config.output == "instances":
            return None, label_field
        return f"{label_field}_segmentation", f"{label_field}_instances"

    def __enter__(self):
        call = _apply_model_call()
        if call is not None:
            self._begin_run(*call)
        return self

    def __exit__(self, exc_type, *args):
        run, self._run = self._run, None
        if run is not None and exc_type is None:
            self._finish(run)

    def _begin_run(self, samples, label_field: str, output_dir: str | None) -> None:
        """Checks the output fields, fits, and records the run, all before any label is written."""
        from conceptseg.runs.plan import ensure_mask_targets, start_record
        from conceptseg.runs.names import refuse_mask_field, run_key_for
        from conceptseg.runs.records import new_run_id

        c = self.config
        if c.text is None and c.demonstrations is None and not c.demo_tag:
            raise ConceptSegError(NOTHING_TO_SEGMENT)
        seg_field, inst_field = self._output_fields(label_field)
        refuse_mask_field([f for f in (seg_field, inst_field) if f], None if c.text is not None else c.mask_field)
        dataset = samples._dataset
        _, choice, demo_ids = self._fit(dataset)
        targets = samples.exclude(list(demo_ids)) if demo_ids else samples
        run_key, run_id = run_key_for(label_field), new_run_id()
        if seg_field:
            ensure_mask_targets(dataset, seg_field, self.concept)
        method = "conceptseg.segment_by_query" if c.text is not None else "conceptseg.segment_by_demonstration"
        start_record(targets, run_key, dict(
            method=method, entry="apply_model", run_id=run_id,
            output_dir=os.path.abspath(output_dir) if output_dir else None,
            pred_field=seg_field or inst_field, instances_field=inst_field if seg_field else None,
            mask_field=None if c.text is not None else c.mask_field, classes=c.classes,
            demonstration_ids=sorted(demo_ids), query=c.text, route_requested=c.route,
            route=choice.route.name, threshold=c.threshold, verification=choice.verification,
            verified=choice.verified, reason=choice.reason, rule=choice.route.rule(), concept=self.concept,
        ))
        self._run = dict(dataset=dataset, key=run_key, id=run_id, targets=len(targets), seconds=[], failures=[],
                         pred_field=seg_field or inst_field, instances_field=inst_field if seg_field else None)

    def _finish(self, run: dict) -> None:
        from conceptseg.runs.plan import finish_record

        choice, seconds = self.choice, run["seconds"]
        summary = dict(
            run_key=run["key"], pred_field=run["pred_field"], instances_field=run["instances_field"],
            route=choice.route.name, verification=choice.verification,
            verifications={v.route: v.scores for v in choice.verifications}, verified=choice.verified,
            reason=choice.reason, rule=choice.route.rule(), targets=run["targets"], segmented=len(seconds),
            skipped=0, failures=run["failures"], fit_seconds=choice.fit_seconds,
            seconds_per_target=(sum(seconds) / len(seconds)) if seconds else None,
        )
        finish_record(run["dataset"], run["key"], summary)

    @property
    def ragged_batches(self):
        # False keeps batching on; the collate function handles mixed sizes.
        return False

    @property
    def transforms(self):
        return self._transforms

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = value

    @property
    def has_collate_fn(self):
        return True

    @property
    def collate_fn(self):
        return collate

    @property
    def required_keys(self):
        return ImageGetItem().required_keys

    def build_get_item(self, field_mapping=None):
        return ImageGetItem(field_mapping=field_mapping)

    def predict(self, arg):
        return self.predict_all([arg])[0]

    def predict_all(self, args):
        """Labels for a batch of GetItem dicts (or HxWx3 arrays when called directly).

        A demonstration gets None (no label): it is never its own target.
        """
        from conceptseg.imaging import to_rgb_float

        router, choice, demo_ids = self._fit()
        items = [arg if isinstance(arg, dict) else {"image": to_rgb_float(arg), "id": "", "error": None}
                 for arg in args]
        todo = [item for item in items if item["id"] not in demo_ids and item["error"] is None]
        # FiftyOne's batch (apply_model's batch_size) is the route's batch: one policy call.
        size = self.config.batch_size or len(todo) or 1
        results = list(router.segment(choice, [Target(i["image"], i["id"]) for i in todo], batch_size=size))
        by_item = {id(item): result for item, result in zip(todo, results)}
        out, seconds, first_error = [], [], None
        for item in items:
            if item["id"] in demo_ids:
                out.append(None)
                continue
            result = by_item.get(id(item))
            error = item["error"] if result is None else result.error
            if error is not None:
                if self._run is not None:
                    self._run["failures"].append({"sample_id": item["id"], "error": error})
                first_error = first_error or (ImageReadError if item["error"] else ConceptSegError)(error)
                continue
            seconds.append(result.seconds)
            out.append(self._labels(result))
        if self._run is not None:
            self._run["seconds"].extend(seconds)
        if first_error is not None:
            raise first_error
        return out

    def _labels(self, result):
        import fiftyone as fo
        import numpy as np

        from conceptseg.runs.writing import label_attributes

        run = self._run or {}
        attrs = label_attributes(self.choice, result, run.get("key"), run.get("id"))
        segmentation = fo.Segmentation(mask=result.mask.astype(np.uint8), cost=result.seconds, **attrs)
        if self.config.output == "segmentation":
            return segmentation
        instances = fio.mask_to_detections(result.mask, result.probability, self.concept,
                                           cost=result.seconds, **attrs)
        if self.config.output == "instances":
            return instances
        return {"segmentation": segmentation, "instances": instances}
