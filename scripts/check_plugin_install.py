"""Checks a plugin installed the FiftyOne way (run by check_plugin_install.sh in its fresh venv).

Usage: python check_plugin_install.py PLUGIN_DIR. The environment names a private database
(FIFTYONE_DATABASE_URI) and plugins dir. Prints each check; exits non-zero on the first failure.
Its last line counts the checks ("install-route: N passed, M failed").
"""

import importlib.metadata
import importlib.util
import os
import sys
import sysconfig
import tempfile
import time

import numpy as np
import yaml

PLUGIN = "@conceptseg/conceptseg-r1"


PASSED = []


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"FAIL: {what}\ninstall-route: {len(PASSED)} passed, 1 failed")
        sys.exit(1)
    PASSED.append(what)
    print(f"ok: {what}")


def engine_not_installed(plugin_dir: str) -> None:
    check(importlib.util.find_spec("conceptseg") is None, "conceptseg is not importable before the plugin loads")
    site = sysconfig.get_paths()["purelib"]
    dists = {d.metadata["Name"].lower() for d in importlib.metadata.distributions(path=[site])}
    check(dists and "conceptseg-r1" not in dists, f"no conceptseg-r1 distribution is pip-installed in {site}")
    check(os.path.isfile(os.path.join(plugin_dir, "requirements.txt")), "the plugin directory ships requirements.txt")


def registry(plugin_dir: str) -> None:
    from fiftyone.operators.registry import OperatorRegistry

    with open(os.path.join(plugin_dir, "fiftyone.yml")) as f:
        meta = yaml.safe_load(f)
    registry = OperatorRegistry()
    errors = registry.list_errors()
    check(errors == [], f"the operator registry has no errors ({errors})")
    ours = {op.uri for op in registry.list_operators(builtin=False) if op.uri.startswith(PLUGIN + "/")}
    want = {f"{PLUGIN}/{name}" for name in meta["operators"] + meta["panels"]}
    check(ours == want, f"every operator and panel of fiftyone.yml registered: {sorted(n.split('/')[-1] for n in ours)}")


def tiny_dataset(media_dir: str):
    """Six 64x64 images: a bright disk (the concept) on dark noise; two are demonstrations."""
    import fiftyone as fo
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    samples = []
    for i in range(6):
        cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(8, 14)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        image[mask] = (230, 60, 40)
        path = os.path.join(media_dir, f"disk{i}.png")
        Image.fromarray(image).save(path)
        sample = fo.Sample(filepath=path, ground_truth=fo.Segmentation(mask=mask.astype(np.uint8)))
        if i < 2:
            sample.tags.append("demo")
        samples.append(sample)
    dataset = fo.Dataset("install-route-check")
    dataset.add_samples(samples)
    return dataset


def operators_run(plugin_dir: str) -> None:
    import fiftyone.operators as foo

    with tempfile.TemporaryDirectory() as media:
        dataset = tiny_dataset(media)
        demos = dataset.match_tags("demo")
        result = foo.execute_operator(
            f"{PLUGIN}/segment_by_demonstration", dataset=dataset, selected=demos.values("id"),
            params=dict(demo_source="selected", mask_field="ground_truth", pred_field="pred",
                        route="appearance", concept="disk", view_target="DATASET"),
        )
        check(result.error is None, f"segment_by_demonstration ran ({result.error})")
        summary = result.result
        check(summary["segmented"] == 4 and not summary["failures"], f"it segmented the 4 targets: {summary['segmented']}")
        check(len(dataset.exists("pred")) == 4, "4 predicted masks were written")

        import conceptseg

        engine = os.path.realpath(conceptseg.__file__)
        check(engine.startswith(os.path.realpath(plugin_dir) + os.sep), f"the engine came from the plugin directory: {engine}")

        result = foo.execute_operator(
            f"{PLUGIN}/evaluate_concept_segmentation", dataset=dataset,
            params=dict(pred_field="pred", gt_field="ground_truth", eval_key="check", view_target="DATASET"),
        )
        check(result.error is None, f"evaluate_concept_segmentation ran ({result.error})")
        from conceptseg.runs.evaluation import metric_field

        ious = [v for v in dataset.values(metric_field("check", "iou")) if v is not None]
        check(len(ious) == 4 and min(ious) > 0.5, f"the masks match the disks: IoU {np.round(ious, 3).tolist()}")

        bundle = os.environ.get("CHECK_TINY_BUNDLE")
        if bundle:  # the reasoning route, with the user's torch and transformers
            result = foo.execute_operator(
                f"{PLUGIN}/segment_by_demonstration", dataset=dataset, selected=demos.values("id"),
                params=dict(demo_source="selected", mask_field="ground_truth", pred_field="pred_reasoning",
                            route="reasoning", model=bundle, concept="disk", view_target="DATASET"),
            )
            check(result.error is None, f"segment_by_demonstration ran the reasoning route ({result.error})")
            summary = result.result
            check(summary["segmented"] == 4 and not summary["failures"],
                  f"the tiny policy and SAM 2 segmented the 4 targets: {summary['segmented']} {summary['failures']}")

        for panel in ("concept_rules", "concept_evaluation"):
            result = foo.execute_operator(
                f"{PLUGIN}/{panel}", dataset=dataset,
                params={"__method__": "on_load", "panel_id": "p1", "panel_state": {}},
            )
            requests = [r["operator_uri"] for r in result.executor.to_json()["requests"]]
            check(result.error is None and "show_panel_output" in requests,
                  f"panel {panel} loads and renders ({result.error or len(requests)} App updates)")
        dataset.delete()


def users_packages() -> None:
    """CHECK_USER_PACKAGES ("torch==V ..."): what ran is the user's own, not a replacement."""
    import torch
    import torchvision
    import transformers

    want = os.environ.get("CHECK_USER_PACKAGES", "")
    ran = {"torch": torch.__version__, "torchvision": torchvision.__version__, "transformers": transformers.__version__}
    for item in want.split():
        name, version = item.split("==")
        check(ran[name].split("+")[0] == version.split("+")[0], f"the operators ran on the user's {name} {version}: {ran[name]}")


def main() -> None:
    plugin_dir = sys.argv[1]
    engine_not_installed(plugin_dir)
    registry(plugin_dir)
    operators_run(plugin_dir)
    users_packages()
    if os.environ.get("CHECK_STARTED_AT"):  # set by check_plugin_install.sh
        print(f"all checks passed in {time.time() - float(os.environ['CHECK_STARTED_AT']):.0f} s")
    print(f"install-route: {len(PASSED)} passed, 0 failed")  # the closing line CI reads


if __name__ == "__main__":
    main()
