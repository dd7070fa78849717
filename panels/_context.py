"""What the Concept Rules panel reads from and leaves in the App's context: the samples a decision
acts on, whether an event came from the App, the run the grid shows for the modal to follow, and
the dataset's default sidebar fields."""

from __future__ import annotations

# The dataset-scoped store where the grid's panel leaves the run it shows, for the modal's to follow.
STORE, FOCUS = "conceptseg_panels", "focus_run"


def show_by_default(dataset, fields: list[str]) -> bool:
    """Makes ``fields`` the dataset's default sidebar fields (App config); True if that changed anything.

    The modal's sidebar shows the dataset's default fields until the user ticks its boxes:
    FiftyOne 1.22's ``set_active_fields`` reaches only the grid's, and its own default shows
    every non-mask label field (another run's ``_instances`` included, this run's mask not).
    So reviewing a run makes its prediction and ground truth the default.
    """
    import fiftyone as fo

    current = dataset.app_config.active_fields
    if current is not None and not current.exclude and list(current.paths) == fields:
        return False
    dataset.app_config.active_fields = fo.core.odm.dataset.ActiveFields(paths=fields)
    dataset.save()
    return True


def from_app(ctx) -> bool:
    """Whether the event came from the App (which sends its whole session context), not an SDK call."""
    return "sample_selection_style" in ctx.request_params


def acted_on(ctx) -> list[str]:
    """The samples Accept and Reject act on: the open sample in the modal, else the grid's selection."""
    return [ctx.current_sample] if ctx.current_sample else list(ctx.selected or [])


def focus(ctx) -> str | None:
    try:
        return ctx.store(STORE).get(FOCUS)
    except Exception:  # a store that cannot be read only loses the modal's hint
        return None


def set_focus(ctx, key: str | None) -> None:
    try:
        ctx.store(STORE).set(FOCUS, key)
    except Exception:
        pass
