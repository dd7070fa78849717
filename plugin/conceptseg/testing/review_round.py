"""A review round to accept, reject or send for correction, as the review tests share it."""

from __future__ import annotations

import numpy as np


def red_review_round(name: str, media_dir: str, detections: bool = True):
    """Two-class scenes, "red" segmented into ``pred`` by the appearance route; returns (dataset, truth).

    The targets' ``gt`` labels the blue squares (value 2) but not the red discs, so accepting a
    prediction adds a class beside the existing one; ``detections`` also puts the blue squares
    in ``dets``.
    """
    import fiftyone as fo

    from conceptseg.datasets import two_classes
    from conceptseg.runs import jobs

    dataset, truth = two_classes.build(name, media_dir)
    for sample in dataset.match_tags("demo", bool=False):
        seg = np.zeros((128, 128), np.uint8)
        seg[truth[sample.id]["blue"]] = 2
        sample.gt = fo.Segmentation(mask=seg)
        if detections:
            sample.dets = two_classes.detections({"blue": truth[sample.id]["blue"]})
        sample.save()
    jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", classes=["red"], route="appearance")
    return dataset, truth
