"""ConceptSeg-R1 engine: segment a concept from a few demonstrations.

The public API, as ``fiftyone.brain`` gives its own: everything a script needs is a name here.

    import conceptseg
    conceptseg.segment_by_demonstration(demonstrations=..., targets=..., mask_field=..., pred_field=...)
    conceptseg.evaluate(view, "predictions", "ground_truth")

Importing this package is cheap: each name loads its module (and FiftyOne, torch or
scikit-learn with it) on first use.
"""

import importlib

__version__ = "0.1.0"

# name -> (module, attribute in it)
_API = {
    # segment, evaluate, train
    "segment_by_demonstration": ("conceptseg.runs.jobs", "segment_by_demonstration"),
    "segment_by_query": ("conceptseg.runs.jobs", "segment_by_query"),
    "evaluate": ("conceptseg.runs.evaluation", "evaluate"),
    "train_concept_policy": ("conceptseg.runs.jobs", "train_concept_policy"),
    # the engine without FiftyOne
    "Router": ("conceptseg.routes.router", "Router"),
    "Demonstration": ("conceptseg.types", "Demonstration"),
    # runs on a dataset
    "list_runs": ("conceptseg.runs.records", "list_runs"),
    "delete_run": ("conceptseg.runs.delete", "delete_run"),
    # the labelling loop
    "review": ("conceptseg.runs.review", "review"),
    "accept": ("conceptseg.runs.review", "accept"),
    "reject": ("conceptseg.runs.review", "reject"),
    "promote": ("conceptseg.runs.review", "promote"),
    "rerun": ("conceptseg.runs.review", "rerun"),
    # the concept library
    "save_concept": ("conceptseg.runs.library", "save"),
    "apply_concept": ("conceptseg.runs.library", "apply"),
    "update_concept": ("conceptseg.runs.library", "update"),
    "list_concepts": ("conceptseg.runs.library", "list_concepts"),
    "export_concept": ("conceptseg.runs.library", "export"),
    "import_concept": ("conceptseg.runs.library", "import_zip"),
    "delete_concept": ("conceptseg.runs.library", "delete"),
    # errors a caller may catch
    "ConceptSegError": ("conceptseg.errors", "ConceptSegError"),
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'conceptseg' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
