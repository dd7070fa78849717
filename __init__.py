"""FiftyOne plugin entry point: registers the operators and panels.

FiftyOne runs this file again for every operator request, so it imports only the thin
operator modules; the engine (and torch, scikit-learn) loads inside ``execute``.
"""



def components() -> tuple[tuple, tuple]:
    """(operators, panels) of the plugin, imported when FiftyOne registers them.

    Imported here, not at module level: a checkout whose folder name is not a Python
    identifier (``conceptseg-r1``) is imported by pytest as a plain module, where relative
    imports fail; FiftyOne always imports this file as a package.
    """
    # The engine ships in this directory (plugin/conceptseg), so a plugin fetched with
    # `fiftyone plugins download` works without pip-installing it; model_zoo/ holds the one
    # rule for finding it, shared with the zoo source.
    from .model_zoo import use_plugin_engine

    use_plugin_engine()
    from .operators.concept_library import ApplyConcept, SaveConcept
    from .operators.correct_most_doubtful import CorrectMostDoubtful
    from .operators.delete_concept_run import DeleteConceptRun
    from .operators.evaluate_concept_segmentation import EvaluateConceptSegmentation
    from .operators.evaluation_metrics import ConceptDice, ConceptIoU, SMeasure, WeightedFMeasure
    from .operators.segment_by_demonstration import SegmentByDemonstration
    from .operators.review_targets import AcceptTargets, PromoteCorrections, RejectTargets, RerunReview
    from .operators.segment_by_query import SegmentByQuery
    from .operators.segment_shard import SegmentShard
    from .operators.train_concept_policy import TrainConceptPolicy
    from .operators.update_concept import UpdateConcept
    from .panels.concept_evaluation import ConceptEvaluation
    from .panels.concept_rules import ConceptRules

    operators = (
        SegmentByDemonstration,
        SegmentByQuery,
        EvaluateConceptSegmentation,
        ConceptIoU,
        ConceptDice,
        WeightedFMeasure,
        SMeasure,
        TrainConceptPolicy,
        DeleteConceptRun,
        AcceptTargets,
        RejectTargets,
        PromoteCorrections,
        RerunReview,
        CorrectMostDoubtful,
        SaveConcept,
        ApplyConcept,
        UpdateConcept,
        SegmentShard,
    )
    return operators, (ConceptRules, ConceptEvaluation)


def register(p):
    """Called by FiftyOne with the plugin context."""
    operators, panels = components()
    for operator in operators + panels:
        p.register(operator)
