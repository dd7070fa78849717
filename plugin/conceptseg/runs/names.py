"""The names a run gives things: its output fields, its run key, its mask folder, its classes.

Shared by every face (CLI, operators, the zoo model) and by the run plan, the records and the
shards, so none of them reaches into another for a name.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from conceptseg.errors import FieldError

if TYPE_CHECKING:
    import fiftyone as fo


# Plain names only: '.' would address an embedded field, '$' is refused by MongoDB, and the
# name is also a directory under the dataset's mask folder (so no '/' or absolute paths).
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def check_field_name(name: str, role: str = "output") -> None:
    """Raises FieldError unless ``name`` is a plain field name (letters, digits, underscores)."""
    if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
        raise FieldError(
            f"The {role} field name {name!r} is not allowed: use letters, digits and underscores, "
            "starting with a letter (e.g. 'predictions')."
        )


def run_key_for(pred_field: str) -> str:
    """The FiftyOne run key under which predictions in ``pred_field`` are recorded."""
    return "conceptseg_" + re.sub(r"\W", "_", pred_field)


def instances_field_for(pred_field: str) -> str:
    """The Detections field written next to a Segmentation prediction field."""
    return pred_field + "_instances"


def default_output_dir(dataset: fo.Dataset, pred_field: str) -> str:
    """Where mask PNGs go unless the caller says otherwise: a folder of predictions only (:mod:`conceptseg.runs.outputs`)."""
    from conceptseg.runs.outputs import PREDICTIONS, mask_dir

    return mask_dir(dataset.name, PREDICTIONS, pred_field)


def refuse_mask_field(fields, mask_field: str | None) -> None:
    """The one guard of every entry point (CLI, operators, apply_model): never write over the demonstrations' masks."""
    for field in fields:
        if mask_field and field == mask_field:
            raise FieldError(
                f"The output field {field!r} is the demonstrations' mask field; choose another output field."
            )


def class_list(classes) -> list[str] | None:
    """``classes`` as a list of names: "A,B", ["A", "B"] or None."""
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = classes.split(",")
    out = [str(c).strip() for c in classes if str(c).strip()]
    return out or None
