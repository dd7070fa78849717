"""Remote zoo source for ConceptSeg-R1 models: download, load, and the App's form.

Each function is a few lines over the engine (``conceptseg.zoo`` and
``conceptseg.zoo_model``), which must be installed in the same environment.
"""


def download_model(model_name, model_path):
    """Fetches the model into ``model_path`` (idempotent: FiftyOne calls it on every load)."""
    from conceptseg.zoo import download_zoo_bundle

    download_zoo_bundle(model_name, model_path)


def load_model(model_name, model_path, bundle=None, **kwargs):
    """Builds the FiftyOne model; ``bundle`` (a local bundle directory) replaces the download.

    Other keyword arguments are ConceptSegModelConfig fields: demonstrations + mask_field,
    or text; route, threshold, concept, output.
    """
    from conceptseg.zoo_model import ConceptSegModel, ConceptSegModelConfig

    return ConceptSegModel(ConceptSegModelConfig(bundle=bundle or model_path, **kwargs))


def resolve_input(model_name, ctx):
    """The form FiftyOne's "Apply zoo model" operator shows for these models."""
    import fiftyone.operators.types as types

    inputs = types.Object()
    inputs.str("text", label="Text query", description="What to segment (leave empty to use demonstrations)")
    inputs.str("demo_tag", label="Demonstration tag", description="Samples with this tag teach the concept")
    inputs.str("mask_field", default="ground_truth", label="Demonstrations' mask field")
    inputs.enum("route", ["auto", "appearance", "prototype", "reasoning"], default="auto", label="Route")
    inputs.enum("output", ["segmentation", "instances", "both"], default="segmentation", label="Output")
    return types.Property(inputs)


def parse_parameters(model_name, ctx, params):
    """Turns the form's demonstration tag into the view load_model expects."""
    tag = params.pop("demo_tag", None)
    if tag:
        params["demonstrations"] = ctx.dataset.match_tags(tag)
    if not params.get("text"):
        params.pop("text", None)
