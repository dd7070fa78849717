"""The paper's evaluation protocol over an imported benchmark (method.md §5.1, metrics.md §2.1–2.2).

Targets are the samples tagged "test" or "val". A sample with a ``concept`` is segmented
by demonstration: demonstrations are drawn, seeded, from the "train" samples of the same
``dataset_key`` and ``concept``; the router verifies and fits once per concept and then
segments each of its targets; prediction and ground truth are binarised and resized to
600² and scored with Fω, Sα, the fg/bg mIoU, IoU and the rest of ``metrics.score_sample``.
A sample with a ``query`` and no concept (ReasonSeg) is segmented from its text by the
reasoning route (a model is needed; without one it is skipped and counted) and scored at
its original resolution, ignore regions left out, for gIoU and cIoU. A multi-image (CR)
sample is segmented by the reasoning route from its own ``references`` (images without
masks: no boxes drawn, none withheld) and its own ``question``, and scored as a concept
(600², Fω, Sα, mIoU); it needs a model too.

Differences from the paper's scripts, on purpose: demonstrations are drawn once per
concept, not per target (one fit per concept instead of one per target), and without
replacement (repeats add nothing and would leak held-out demonstrations into the
verification); demonstrations whose mask is empty or covers the whole image are passed
over. The paper draws 4 references; ``num_demonstrations`` sets ours.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from conceptseg.runs import fiftyone_io as fio
from conceptseg import metrics
from conceptseg.datasets.base import GT_FIELD, IGNORE_FIELD
from conceptseg.errors import ConceptSegError, EmptyViewError, FieldError
from conceptseg.runs.jobs import Progress
from conceptseg.runs.writing import label_attributes
from conceptseg.runs.names import default_output_dir
from conceptseg.runs.outputs import writable_dir
from conceptseg.routes.router import DEFAULT_THRESHOLD, RouteChoice, make_router
from conceptseg.tables import summarise
from conceptseg.types import Demonstration, Verification

METHOD = "conceptseg.benchmark"
EVAL_TAGS = ("val", "test")
TRAIN_TAG = "train"
CONCEPT_METRICS = ("iou", "intersection", "union", "wfm", "sm", "em", "mae", "dice", "ber", "miou")
QUERY_METRICS = ("iou", "intersection", "union")
# Run settings that must match for a resumed run to continue the same experiment.
_RESUME_KEYS = ("route", "seed", "num_demonstrations", "threshold", "model", "gt_field")


@dataclass
class Group:
    """Targets that share demonstrations (a concept) or a table row (ReasonSeg split)."""

    key: str
    level: str
    category: str | None
    dataset_key: str | None
    concept: str | None
    split: str | None
    query: bool
    ids: list[str] = field(default_factory=list)
    multi_image: bool = False  # CR: each target brings its own references and question
    todo: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class Fields:
    """Names of the per-sample fields a benchmark run writes."""

    def __init__(self, run_key: str):
        self.key = run_key
        self.pred = f"{run_key}_pred"
        self.scored = f"{run_key}_scored"

    def metric(self, name: str) -> str:
        """The field holding metric ``name``."""
        return f"{self.key}_{name}"

    def all(self) -> list[str]:
        """Every field of the run."""
        return [self.pred, self.scored] + [self.metric(m) for m in CONCEPT_METRICS]


def run_benchmark(
    dataset: fo.Dataset,
    route: str = "auto",
    model=None,
    seed: int = 0,
    num_demonstrations: int = 3,
    run_key: str = "benchmark",
    resume: bool = True,
    progress: Progress | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    gt_field: str = GT_FIELD,
) -> dict:
    """Segments and scores every test/val sample; returns levels, concepts, samples and tables.

    Per sample it writes ``<run_key>_pred`` (a Segmentation), ``<run_key>_<metric>`` and
    ``<run_key>_scored``; the run is recorded as the FiftyOne run ``run_key``. With
    ``resume``, samples scored before under the same run key and settings are not
    segmented again (their stored scores count); without it the run starts over.

    Returns ``{"levels": {level: {metric: value, "n": count}}, "concepts": {group:
    {...}}, "samples": {id: {...}}, "tables": {level: markdown}, "markdown": str,
    "counts": {...}, "failures": [...]}``. Group keys are ``dataset_key/concept``
    (ReasonSeg: ``dataset_key/split``); ReasonSeg levels are ``ReasonSeg-val`` and
    ``ReasonSeg-test``, since the paper reports the splits apart.
    """
    if num_demonstrations < 1:
        raise ConceptSegError(f"num_demonstrations must be at least 1, got {num_demonstrations}.")
    key = re.sub(r"\W", "_", run_key)
    fio.check_mask_field(dataset, gt_field, "ground-truth")
    targets = dataset.match_tags(list(EVAL_TAGS))
    if len(targets) == 0:
        raise EmptyViewError(
            f"No sample of {dataset.name!r} is tagged test or val; import a benchmark with splits "
            "or tag the samples to score."
        )
    if not any(dataset.has_field(f) and len(targets.exists(f)) for f in ("concept", "query")):
        raise FieldError(
            f"No test or val sample of {dataset.name!r} has a concept or a query field, so nothing can be scored: "
            "give each sample a string field 'concept' (segment by demonstration) or 'query' (text), e.g. "
            "by importing with `conceptseg import` (docs/your-data.md)."
        )
    writable_dir(default_output_dir(dataset, Fields(key).pred), "mask output directory")
    bundle = _load_model(model)
    make_router(route, threshold, bundle)  # refuses an unknown route, or reasoning without a model, first
    fields = Fields(key)
    config = dict(method=METHOD, route=route, seed=seed, num_demonstrations=num_demonstrations,
                  threshold=threshold, model=model if isinstance(model, str) else None, gt_field=gt_field)
    previous = _start(dataset, fields, config, resume)
    groups, counts = _plan(dataset, targets, fields, gt_field)
    for group in groups:
        group.info = previous.get(group.key, {})
    _ensure_mask_targets(dataset, fields.pred)
    state = dict(done=0, total=sum(len(g.todo) for g in groups), progress=progress, failures=[])
    for group in groups:
        if group.todo:
            _run_group(dataset, group, fields, config, bundle, counts, state)
            _save(dataset, fields.key, groups, counts, state["failures"])
    return _results(dataset, groups, fields, counts, state["failures"])


def _load_model(model):
    if model is None or not isinstance(model, str):
        return model
    from conceptseg.model.checkpoint import load_bundle_cached

    return load_bundle_cached(model)


def _start(dataset: fo.Dataset, fields: Fields, config: dict, resume: bool) -> dict:
    """Checks the run key, clears or keeps earlier results, registers the run; returns old group info."""
    previous: dict = {}
    if fields.key in dataset.list_runs():
        info = dataset.get_run_info(fields.key)
        if getattr(info.config, "method", None) != METHOD:
            raise FieldError(f"Run key {fields.key!r} belongs to another run; choose another run key (--run-key).")
        if resume:
            changed = [k for k in _RESUME_KEYS if getattr(info.config, k, None) != config[k]]
            if changed:
                was = ", ".join(f"{k}={getattr(info.config, k, None)!r}" for k in changed)
                raise ConceptSegError(
                    f"Run {fields.key!r} was made with {was}; pass resume=False (--restart) to start it over "
                    "with these settings, or choose another run key (--run-key)."
                )
            results = dataset.load_run_results(fields.key, cache=False)
            previous = {g["key"]: g for g in (getattr(results, "groups", None) or [])}
        else:
            dataset.delete_sample_fields([f for f in fields.all() if dataset.has_field(f)])
    else:
        taken = [f for f in fields.all() if dataset.has_field(f)]
        if taken:
            raise FieldError(
                f"Fields {', '.join(taken)} exist and are not from a conceptseg benchmark; "
                "choose another run key (--run-key)."
            )
    dataset.register_run(fields.key, dataset.init_run(**config), overwrite=True)
    return previous


def _column(view, name: str, n: int) -> list:
    return view.values(name) if view.has_field(name) else [None] * n


def _plan(dataset, targets, fields: Fields, gt_field: str) -> tuple[list[Group], dict]:
    """Groups the targets by concept (or ReasonSeg split) and counts what cannot be scored."""
    ids, tags = targets.values("id"), targets.values("tags")
    n = len(ids)
    level, category, dkey, concept, query, refs = (_column(targets, f, n) for f in
                                                   ("level", "category", "dataset_key", "concept", "query", "references"))
    with_gt = set(targets.exists(gt_field).values("id"))
    scored = set()
    if dataset.has_field(fields.scored):
        scored = set(targets.match(F(fields.scored) == True).values("id"))  # noqa: E712
    counts = dict(targets=n, no_ground_truth=0, no_concept=0, no_train=0, needs_model=0,
                  scored_before=0, scored_now=0, failed=0)
    groups: dict[str, Group] = {}
    for i, sample_id in enumerate(ids):
        split = next(t for t in tags[i] if t in EVAL_TAGS)
        is_query = concept[i] is None and bool(query[i])
        if sample_id not in with_gt or (concept[i] is None and not is_query):
            counts["no_ground_truth" if sample_id not in with_gt else "no_concept"] += 1
            continue
        gkey = f"{dkey[i]}/{split}" if is_query else f"{dkey[i]}/{concept[i]}"
        group = groups.get(gkey)
        if group is None:
            lvl = f"{level[i] or 'ReasonSeg'}-{split}" if is_query else (level[i] or "other")
            group = groups[gkey] = Group(gkey, lvl, category[i], dkey[i], concept[i],
                                         split if is_query else None, is_query, multi_image=bool(refs[i]))
        group.ids.append(sample_id)
        if sample_id in scored:
            counts["scored_before"] += 1
        else:
            group.todo.append(sample_id)
    return sorted(groups.values(), key=lambda g: (g.level, g.key)), counts


def draw_demonstrations(
    dataset: fo.Dataset, pool, k: int, seed: int, group_key: str, gt_field: str
) -> list[Demonstration]:
    """Up to ``k`` demonstrations from ``pool``, in an order fixed by seed and group key.

    The pool is sorted by filepath first, so the draw does not depend on sample ids and
    a re-imported dataset gets the same demonstrations.
    """
    ids, paths = pool.values(["id", "filepath"])
    order = sorted(range(len(ids)), key=lambda i: (paths[i], ids[i]))
    rng = np.random.default_rng([seed, zlib.crc32(group_key.encode())])
    demos = []
    for i in rng.permutation(len(order)):
        try:
            demo = fio.read_demonstration(dataset[ids[order[i]]], gt_field)
        except (ConceptSegError, OSError):  # an unreadable image or mask: the next one will do
            continue
        if demo.mask.any() and not demo.mask.all():  # such masks teach nothing (router refuses them)
            demos.append(demo)
            if len(demos) == k:
                break
    return demos


def _choose(dataset, group: Group, config: dict, bundle):
    """(router, choice, demonstration ids) for a group, or (None, reason, []) when it cannot run."""
    route, threshold = config["route"], config["threshold"]
    if group.multi_image:
        if bundle is None or bundle.policy is None or route in ("appearance", "prototype"):
            return None, "multi-image items need the reasoning route: pass a model (--model)", []
        router = make_router("reasoning", threshold, bundle)
        return router, RouteChoice(router.routes[0], [Verification("reasoning")], verified=False,
                                   reason="multi-image item: its own references, nothing withheld to verify"), []
    if group.query:
        if bundle is None or route in ("appearance", "object"):  # the weight-free routes read no text
            return None, "text queries need the reasoning route: pass a model (--model)", []
        router = make_router("reasoning", threshold, bundle)
        reasoning = router.routes[0]
        reasoning.fit([])
        return router, RouteChoice(reasoning, [Verification(reasoning.name)], verified=False,
                                   reason="text query: no demonstration to verify against"), []
    pool = dataset.match_tags(TRAIN_TAG).match(
        (F("dataset_key") == group.dataset_key) & (F("concept") == group.concept)
    ).exists(config["gt_field"])
    demos = draw_demonstrations(dataset, pool, config["num_demonstrations"], config["seed"], group.key,
                                config["gt_field"])
    if not demos:
        return None, "no train sample of this concept has a mask with both concept and background", []
    question = dataset[group.todo[0]]["question"] if dataset.has_field("question") else None
    router = make_router(route, threshold, bundle, question=question or group.concept)
    return router, router.choose(demos), [d.id for d in demos]


def _run_group(dataset, group: Group, fields: Fields, config: dict, bundle, counts: dict, state: dict) -> None:
    router, choice, demo_ids = _choose(dataset, group, config, bundle)
    if router is None:
        counts["needs_model" if group.query or group.multi_image else "no_train"] += len(group.todo)
        group.info = dict(key=group.key, skipped=choice)
        return
    group.info = dict(key=group.key, skipped=None, route=choice.route.name, verification=choice.verification,
                      verified=choice.verified, reason=choice.reason, rule=choice.route.rule(),
                      demonstrations=demo_ids)
    _segment(dataset, group, router, choice, fields, config["gt_field"], counts, state)


def _segment(dataset, group: Group, router, choice, fields: Fields, gt_field: str, counts: dict, state: dict) -> None:
    """Segments and scores the group's targets, saving in batches about once a second."""
    names = QUERY_METRICS if group.query else CONCEPT_METRICS
    out_dir = default_output_dir(dataset, fields.pred)
    view = dataset.select(group.todo)
    with view.save_context(batch_size=1.0) as saver:
        for sample, target, error in fio.iter_targets(view):
            if target is not None:
                if group.query:  # one reasoning route serves every query; only its question changes
                    choice.route.config.question = sample["query"]
                if group.multi_image:  # each CR item: its own references and question
                    error = _fit_references(choice.route, sample)
            if target is not None and error is None:
                result = next(router.segment(choice, [target]))
                error = result.error
            if error is None:
                scores, error = _score_target(dataset, sample, result.mask, gt_field, group.query)
            if error is None:
                sample[fields.pred] = fio.mask_to_segmentation(
                    result.mask, f"{out_dir}/{sample.id}.png", cost=result.seconds,
                    **label_attributes(choice, result, fields.key),
                )
                for name in names:
                    sample[fields.metric(name)] = scores[name]
                sample[fields.scored] = True
                saver.save(sample)
                counts["scored_now"] += 1
            else:
                counts["failed"] += 1
                state["failures"].append({"sample_id": sample.id, "filepath": sample.filepath, "error": error})
            state["done"] += 1
            if state["progress"] is not None:
                state["progress"](state["done"], state["total"])


def _fit_references(route, sample) -> str | None:
    """Gives the route a CR item's question and reference images; why not, if they cannot be read."""
    from conceptseg.errors import ImageReadError
    from conceptseg.imaging import load_rgb

    route.config.question = sample["question"] or route.config.question
    try:
        route.fit_references([load_rgb(path) for path in sample["references"]])
    except (ImageReadError, OSError) as e:
        return f"cannot read a reference image: {e}"
    return None


def _score_target(dataset, sample, pred: np.ndarray, gt_field: str, query: bool) -> tuple[dict | None, str | None]:
    """(scores, None), or (None, why) when the ground truth cannot be read."""
    frame = (pred.shape[1], pred.shape[0])
    try:
        gt = fio.label_to_mask(sample[gt_field], frame)
        ignore = fio.label_to_mask(sample[IGNORE_FIELD], frame) if dataset.has_field(IGNORE_FIELD) else None
    except OSError as e:  # a mask file deleted or moved since the import
        return None, f"cannot read the ground truth: {e}"
    return _score(pred, gt, ignore, query), None


def _score(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None, query: bool) -> dict[str, float]:
    """The paper's 600² scores for concepts; LISA's original-resolution IoU for queries."""
    if not query:
        return metrics.score_sample(pred, gt, size=metrics.PAPER_SIZE)
    if ignore is not None:  # ignored pixels count in neither intersection nor union (LISA)
        pred = pred & ~ignore
    return metrics.score_sample(pred, gt)


def _ensure_mask_targets(dataset: fo.Dataset, pred_field: str) -> None:
    if pred_field not in dataset.mask_targets:
        dataset.mask_targets = {**dataset.mask_targets, pred_field: {1: "concept"}}
        dataset.save()


def _save(dataset: fo.Dataset, run_key: str, groups: list[Group], counts: dict, failures: list, **extra) -> None:
    """Stores what the run knows so far, so an interrupted run keeps each concept's route and demonstrations."""
    results = dataset.init_run_results(
        run_key, groups=[g.info for g in groups if g.info], counts=counts, failures=failures, **extra
    )
    dataset.save_run_results(run_key, results, overwrite=True)


def _stored_scores(dataset, groups: list[Group], fields: Fields) -> dict[str, dict[str, float]]:
    """Every scored target's metrics, read back from its fields (the one source of truth)."""
    by_id = {i: g for g in groups for i in g.ids}
    if not dataset.has_field(fields.scored):
        return {}
    view = dataset.match(F(fields.scored) == True)  # noqa: E712
    stored = [m for m in CONCEPT_METRICS if dataset.has_field(fields.metric(m))]  # query-only runs lack some
    columns = view.values(["id"] + [fields.metric(m) for m in stored])
    out = {}
    for row in zip(*columns):
        group = by_id.get(row[0])
        if group is not None:
            values = dict(zip(stored, row[1:]))
            out[row[0]] = {m: values[m] for m in (QUERY_METRICS if group.query else CONCEPT_METRICS)}
    return out


def _results(dataset, groups: list[Group], fields: Fields, counts: dict, failures: list) -> dict:
    """Aggregates the stored scores, renders the tables and records them with the run."""
    out = summarise(groups, _stored_scores(dataset, groups, fields))
    _save(dataset, fields.key, groups, counts, failures, levels=out["levels"], tables=out["tables"])
    return dict(run_key=fields.key, **out, counts=counts, failures=failures)
