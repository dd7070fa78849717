"""How our operators answer in the App: a progress dialog while they work, one sentence when they end.

FiftyOne 1.22.1 streams an operator's progress to the App only from a generator (the App
posts to ``/operators/execute/generator``); it exhausts a generator everywhere else and keeps
no result (``do_execute_operator(exhaust=True)`` returns None), and its plain
``/operators/execute`` route cannot serialise one. So only a request from the App gets a
generator here; every other caller (SDK, HTTP script, delegated worker) gets the job's result,
and errors raise as before.

In the App the dialog shows the progress, then is replaced by the result sentence (what was
written where, how many) or, for an error the user can fix (``ConceptSegError``), by that
error in one sentence; both also come as a notification. Other exceptions are bugs and raise
(FiftyOne shows them with their traceback).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import fiftyone.operators.types as types

from ._forms import progress_callback

# At most this many progress updates a second reach the App; the last one always does.
UPDATES_PER_SECOND = 4


def from_app(ctx) -> bool:
    """Whether the request came from the App's own execution context."""
    # The 1.22.1 App sends its whole session context with every run, including the grid's
    # sample selection style; execute_operator and HTTP scripts send only what they are given.
    # (The App's prompt_id is not set for a plain Execute, and hidden form defaults are not sent.)
    return "sample_selection_style" in ctx.request_params


def run(ctx, job: Callable, *, title: str, done: Callable[[dict], str], start: str = "Working…",
        unit: str = "samples", reload: bool = True, dialog: bool = True, after: Callable | None = None):
    """What an operator's ``execute`` returns for ``job(progress) -> result``.

    ``title`` heads the dialog, ``start`` is its label until the first progress report,
    ``done(result)`` the sentence at the end; ``unit`` names what progress counts. A quick
    action (accept, reject) passes ``dialog=False``: no dialog, only the notification.
    ``after(ctx, result)`` may return more App operations (opening a sample) to send last.
    """
    if ctx.delegated or not from_app(ctx):
        result = job(progress_callback(ctx))
        if reload and not ctx.delegated:
            ctx.ops.reload_dataset()
        return result
    return _stream(ctx, job, title, start, done, unit, reload, dialog, after)


def _stream(ctx, job, title, start, done, unit, reload, dialog, after):
    """Runs ``job`` in a worker thread and yields the dialog's updates as it reports progress."""
    from conceptseg.errors import ConceptSegError

    updates: queue.Queue = queue.Queue()
    outcome: dict = {}
    last_put = [0.0]

    def report(n_done: int, total: int) -> None:
        now = time.monotonic()
        if n_done == total or now - last_put[0] >= 1.0 / UPDATES_PER_SECOND:
            last_put[0] = now
            updates.put((n_done, total))

    def work() -> None:
        try:
            outcome["result"] = job(report)
        except Exception as error:  # handed to the generator, which reports or re-raises it
            outcome["error"] = error
        finally:
            updates.put(None)

    worker = threading.Thread(target=work, name="conceptseg-operator", daemon=True)
    worker.start()
    if dialog:
        yield ctx.ops.set_progress(progress=0.0, label=start)
    while (update := updates.get()) is not None:
        n_done, total = update
        if dialog:
            yield ctx.ops.set_progress(progress=n_done / max(total, 1), label=f"{n_done}/{total} {unit}")
    worker.join()
    error = outcome.get("error")
    if isinstance(error, ConceptSegError):
        if dialog:  # the dialog would stay at its last progress: it shows the reason instead
            yield show_message(ctx, title, str(error), kind="error")
        yield ctx.ops.notify(str(error), variant="error")
        return
    if error is not None:
        if dialog:
            yield show_message(ctx, title, f"{title} stopped on an unexpected error (details in the App's error box).",
                               kind="error")
        raise error
    result = outcome["result"]
    if reload:
        yield ctx.ops.reload_dataset()
    sentence = done(result)
    if dialog:
        yield show_message(ctx, title, sentence, kind="success")
    yield ctx.ops.notify(sentence, variant="success")
    for operation in (after(ctx, result) if after else None) or ():
        yield operation


def show_message(ctx, title: str, sentence: str, kind: str = "success"):
    """The operator dialog's content replaced by one sentence (success, warning or error)."""
    outputs = types.Object()
    view = {"success": types.Success, "warning": types.Warning, "error": types.Error}[kind]
    outputs.view("message", view(label=sentence))
    return ctx.ops.show_output(types.Property(outputs, view=types.View(label=title)).to_json(), {})
