"""FiftyOne plugin entry point: registers the operators and panels.

FiftyOne runs this file again for every operator request, so it imports only the thin
operator modules; the engine (and torch, scikit-learn) loads inside ``execute``.
"""

from .operators.evaluate_concept_segmentation import EvaluateConceptSegmentation
from .operators.segment_by_demonstration import SegmentByDemonstration


def register(p):
    """Called by FiftyOne with the plugin context."""
    p.register(SegmentByDemonstration)
    p.register(EvaluateConceptSegmentation)
