"""The FiftyOne model: ConceptSeg-R1 through ``apply_model`` and the model zoo.

One model, two modes, fixed at construction: *demonstration* (a view of samples with
masks; the router picks and verifies a route once) or *query* (a text, or a per-sample
text field, read by the reasoning policy). Images of any size batch together: the
collate function keeps them as a list, and ``predict_all`` segments them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fiftyone.core.models as fom
import fiftyone.utils.torch as fout

from conceptseg import fiftyone_io as fio
from conceptseg.errors import ConceptSegError, ImageReadError
from conceptseg.imaging import load_rgb
from conceptseg.router import DEFAULT_THRESHOLD
from conceptseg.types import Target

OUTPUTS = ("segmentation", "instances", "both")


@dataclass
class ConceptSegModelConfig:
    """Settings of :class:`ConceptSegModel`.

    Attributes:
        bundle: a bundle directory, hub id, or a loaded Bundle; None = weight-free routes only
        demonstrations: a FiftyOne view whose ``mask_field`` masks show the concept
        mask_field: where the demonstrations' masks are
        text: a query for every sample (query mode)
        route: "auto" or a route name (demonstration mode)
        threshold: held-out IoU a route must reach to count as verified
        concept: label of the predicted masks (default: the text, or "concept")
        output: "segmentation" (one Segmentation), "instances" (Detections) or "both"
            (a dict: fields <label_field>_segmentation and <label_field>_instances)
    """

    bundle: Any = None
    demonstrations: Any = None
    mask_field: str = "ground_truth"
    text: str | None = None
    route: str = "auto"
    threshold: float = DEFAULT_THRESHOLD
    concept: str | None = None
    output: str = "segmentation"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ConceptSegError(f"output must be one of {', '.join(OUTPUTS)}; got {self.output!r}.")
        if (self.demonstrations is None) == (self.text is None):
            raise ConceptSegError(
                "Give either demonstrations (a view whose masks show the concept) or a text query, not both."
            )


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
    """Segments a concept, taught by demonstrations or named by a query, in each image."""

    def __init__(self, config: ConceptSegModelConfig):
        from conceptseg.router import RouteChoice, make_router
        from conceptseg.types import Verification

        fom.SupportsGetItem.__init__(self)
        self.config = config
        bundle = config.bundle
        if isinstance(bundle, str):
            from conceptseg.checkpoint import load_bundle_cached

            bundle = load_bundle_cached(bundle)
        if config.text is not None:
            self.router = make_router("reasoning", bundle=bundle, question=config.text)
            route = self.router.routes[0]
            route.fit([])
            self.choice = RouteChoice(route, [Verification(route.name)], reason="text query: nothing to verify against")
            self.concept = config.concept or config.text
        else:
            self.router = make_router(config.route, config.threshold, bundle=bundle, question=config.concept)
            demonstrations, _ = fio.read_demonstrations(config.demonstrations, config.mask_field)
            self.choice = self.router.choose(demonstrations)
            self.concept = config.concept or "concept"
        self._transforms = None
        self._preprocess = False

    media_type = "image"

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
        """Labels for a batch of GetItem dicts (or HxWx3 arrays when called directly)."""
        from conceptseg.imaging import to_rgb_float

        out = []
        for arg in args:
            item = arg if isinstance(arg, dict) else {"image": to_rgb_float(arg), "id": "", "error": None}
            if item["error"] is not None:
                raise ImageReadError(item["error"])
            result = next(self.router.segment(self.choice, [Target(item["image"], item["id"])]))
            if result.error is not None:
                raise ConceptSegError(result.error)
            out.append(self._labels(result))
        return out

    def _labels(self, result):
        import fiftyone as fo
        import numpy as np

        details = result.details
        attrs = dict(
            route=result.route,
            verification=result.verification,
            verified=result.verified,
            rule=details.get("rule") or self.choice.route.rule(),
            reasoning=details.get("reasoning"),
            answer=details.get("answer"),
            parse_error=details.get("parse_error"),
        )
        segmentation = fo.Segmentation(mask=result.mask.astype(np.uint8), cost=result.seconds, **attrs)
        if self.config.output == "segmentation":
            return segmentation
        instances = fio.mask_to_detections(result.mask, result.probability, self.concept, **attrs)
        if self.config.output == "instances":
            return instances
        return {"segmentation": segmentation, "instances": instances}
