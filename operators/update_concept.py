"""Operator: Update concept — what the review of an Apply concept run taught becomes the concept's new version.

Thin over :func:`conceptseg.runs.library.update` (the CLI's ``conceptseg concepts update``).
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _live

DEMONSTRATION_METHOD = "conceptseg.segment_by_demonstration"


def applied_runs(dataset) -> list[dict]:
    """The dataset's runs made by Apply concept (`concepts apply`), newest first: pred_field, concept, version."""
    if dataset is None:
        return []
    found = []
    for key in dataset.list_runs():
        info = dataset.get_run_info(key)
        source = getattr(info.config, "concept_source", None)
        if info.config.method == DEMONSTRATION_METHOD and source and dataset.has_field(info.config.pred_field):
            found.append((info.timestamp, {"pred_field": info.config.pred_field, "concept": source["concept"],
                                           "version": source["version"]}))
    return [run for _, run in sorted(found, key=lambda t: t[0], reverse=True)]


def _new_samples(dataset, pred_field: str, record: dict) -> tuple[int, int]:
    """(accepted, absent) samples of the run's review that the concept's ``record`` does not hold yet."""
    from conceptseg.runs.review import state

    loop = state(dataset, pred_field)
    origin = record.get("provenance", {}).get("dataset")
    held = {e.get("sample_id") for e in record["demonstrations"] if e.get("dataset", origin) == dataset.name}
    accepted = [i for i in loop["accepted"] if i not in held]
    negatives = [i for i in loop["negatives"] if i not in held and i not in loop["accepted"]]
    return len(accepted), len(negatives)


class UpdateConcept(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="update_concept", label="Update concept",
            description="Add the samples accepted on an Apply concept run to the saved concept, as its new version",
            dynamic=True, execute_as_generator=True,  # the App gets the progress and the closing sentence
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        runs = applied_runs(ctx.dataset)
        choices = types.DropdownView()
        for run in runs:
            choices.add_choice(run["pred_field"], label=run["pred_field"],
                               description=f"applied {run['concept']}@{run['version']}")
        fields = [run["pred_field"] for run in runs]
        prop = inputs.enum("pred_field", fields, required=True, default=fields[0] if fields else None,
                           label="Run (prediction field)", description="A run made by Apply concept", view=choices)
        if not runs:
            prop.invalid = True
            prop.error_message = ("No run made by Apply concept on this dataset: apply a saved concept, review its "
                                  "predictions and accept some first.")
            return types.Property(inputs, view=types.View(label="Update concept"))
        run = next((r for r in runs if r["pred_field"] == ctx.params.get("pred_field")), runs[0])
        name = inputs.str("name", required=True, default=run["concept"], label="Concept",
                          description="The saved concept the run applied")
        value = ctx.params.get("name") or run["concept"]
        error = self._name_error(value, run)
        if error:
            name.invalid, name.error_message = True, error
            return types.Property(inputs, view=types.View(label="Update concept"))
        from conceptseg.runs.library import resolve

        snapshot = resolve(value)
        current = snapshot.version
        accepted, negatives = _new_samples(ctx.dataset, run["pred_field"], snapshot.record)
        if not accepted and not negatives:
            prop = inputs.view("nothing", types.Warning(
                label=f"Nothing new to add: no sample of {run['pred_field']!r} is accepted or rejected as absent "
                      f"that {value}@{current} does not hold; review its predictions and accept some first."))
            prop.invalid = True
        else:
            inputs.view("what", types.Notice(
                label=f"Adds {accepted} accepted and {negatives} absent sample(s) to {value!r} as version "
                      f"{current + 1}; version {current} stays applicable as {value}@{current}."))
        return types.Property(inputs, view=types.View(label="Update concept"))

    @staticmethod
    def _name_error(value: str, run: dict) -> str | None:
        from conceptseg.runs.library import NAME, exists

        if not NAME.fullmatch(value):
            return "Use letters, digits, '_' and '-' only."
        if value != run["concept"]:
            return f"{run['pred_field']!r} applied {run['concept']!r}, not {value!r}."
        if not exists(value):
            return f"No saved concept {value!r} (deleted since it was applied)."
        return None

    def execute(self, ctx):
        from conceptseg.runs.library import update

        def job(_):
            record = update(ctx.params["name"], ctx.dataset, ctx.params["pred_field"])
            return {"message": _updated_sentence(record), "name": record["name"], "version": record["version"],
                    "added": len(record["added"]), "demonstrations": len(record["demonstrations"]),
                    "verification": record["verification"]}

        # The route is chosen and verified again on the grown demonstrations: seconds, so a dialog.
        return _live.run(ctx, job, title="Update concept", reload=False, done=lambda out: out["message"],
                         start="Verifying the concept on its grown demonstrations")

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        return types.Property(outputs)


def _updated_sentence(record: dict) -> str:
    v, previous = record["verification"], record["previous_version"]
    return (f"Saved {record['name']!r} version {record['version']}: {len(record['added'])} sample(s) added, "
            f"{len(record['demonstrations'])} demonstrations, verification {'n/a' if v is None else f'{v:.2f}'}; "
            f"version {previous} stays applicable as {record['name']}@{previous}.")
