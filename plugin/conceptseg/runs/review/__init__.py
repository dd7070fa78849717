"""The labeling loop on a run's predictions: review by doubt, accept, reject, promote corrections, re-run.

A run of :func:`conceptseg.runs.jobs.segment_by_demonstration` writes predictions in ``pred_field``.
Here a user

- **reviews** its targets, most doubtful first (``doubt`` on each label, see :mod:`conceptseg.routes.doubt`);
- **accepts** a prediction: it becomes ground truth in the demonstrations' mask field under the
  concept's class (other classes' pixels and labels are kept), and the sample is tagged
  ``conceptseg_accepted`` and joins the demonstrations; ground truth of the concept's class
  already there is replaced only when asked (``replace``), never silently;
- **rejects** a prediction: tagged ``conceptseg_rejected``; with ``absent`` the concept is not
  in the image at all and the sample joins the demonstrations as a negative;
- **promotes** corrected masks from any field (drawn in an annotation tool, written by a
  script) exactly as an accept would;
- **re-runs**: the targets not yet accepted are segmented again with the enlarged
  demonstration set, as a new round of the same run.

The loop's record (accepted, rejected and negative ids, every round with its demonstrations
and verification) lives in ``dataset.info["conceptseg_review"][pred_field]``; every change to it
is one compare-and-set in the database, so processes reviewing the same run at once (an accept
during a re-run) all land.

A run made by `concepts apply` learned from a saved concept's demonstrations, which are not
samples here: its accepted masks go into a mask field of this dataset that the user names
once (see :func:`truth_field`), and a re-run fits on the concept's demonstrations plus the
accepted and absent samples (:mod:`conceptseg.runs.review.rounds`).

The package's modules: ``record`` (the loop's record), ``truth`` (writing ground truth), ``decisions``
(review, accept, reject, promote) and ``rounds`` (re-run); their public names are here.
"""

from conceptseg.runs.review.record import (  # noqa: F401
    ACCEPTED_TAG, INFO_KEY, LABEL_TYPES, REJECTED_TAG, ReviewError, SEGMENT_METHOD, applied_source,
    id_list, run_config, state,
)
from conceptseg.runs.review.truth import (  # noqa: F401
    absence_check, applied_truth_class, remember_truth_field, shown_mask_field, truth_class,
    truth_field, truth_problems, truth_target, write_truth,
)
from conceptseg.runs.review.decisions import (  # noqa: F401
    review, accept, acceptable, correction_concept, holding_truth, promote, reject,
)
from conceptseg.runs.review.rounds import learned_demonstrations, rerun, state_after_rerun  # noqa: F401
