"""FiftyOne plugin entry point: registers the operators and panels.

FiftyOne runs this file again for every operator request, so it imports only the thin
operator modules; the engine (and torch, scikit-learn) loads inside ``execute``.
"""

from .operators.concept_library import ApplyConcept, SaveConcept
from .operators.evaluate_concept_segmentation import EvaluateConceptSegmentation
from .operators.evaluation_metrics import ConceptDice, ConceptIoU, SMeasure, WeightedFMeasure
from .operators.segment_by_demonstration import SegmentByDemonstration
from .operators.review_targets import AcceptTargets, PromoteCorrections, RejectTargets, RerunReview
from .operators.segment_by_query import SegmentByQuery
from .operators.train_concept_policy import TrainConceptPolicy
from .panels.concept_evaluation import ConceptEvaluation
from .panels.concept_rules import ConceptRules

OPERATORS = (
    SegmentByDemonstration,
    SegmentByQuery,
    EvaluateConceptSegmentation,
    ConceptIoU,
    ConceptDice,
    WeightedFMeasure,
    SMeasure,
    TrainConceptPolicy,
    AcceptTargets,
    RejectTargets,
    PromoteCorrections,
    RerunReview,
    SaveConcept,
    ApplyConcept,
)
PANELS = (ConceptRules, ConceptEvaluation)


def register(p):
    """Called by FiftyOne with the plugin context."""
    for operator in OPERATORS:
        p.register(operator)
    for panel in PANELS:
        p.register(panel)
