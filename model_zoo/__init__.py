"""Remote zoo source for ConceptSeg-R1 models: download, load, and the App's form.

Each function is a few lines over the engine (``conceptseg.checkpoint`` and
``conceptseg.zoo_model``), which must be installed in the same environment.
"""


def download_model(model_name, model_path):
    """Fetches the model into ``model_path`` (idempotent: FiftyOne calls it on every load)."""
    from conceptseg.checkpoint import download_zoo_bundle

    download_zoo_bundle(model_name, model_path)


def load_model(model_name, model_path, bundle=None, **kwargs):
    """Builds the FiftyOne model; ``bundle`` (a local bundle directory) replaces the download.

    Other keyword arguments are ConceptSegModelConfig fields: demonstrations or demo_tag
    (+ mask_field, classes), or text; route, threshold, concept, output. Without any, the
    model loads and takes them as attributes before apply_model.
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
    inputs.enum("route", ["auto", "appearance", "object", "prototype", "reasoning"], default="auto", label="Route")
    inputs.enum("output", ["segmentation", "instances", "both"], default="segmentation", label="Output")
    return types.Property(inputs)


def parse_parameters(model_name, ctx, params):
    """Drops the form's empty choices: the tag is read from the dataset apply_model runs on."""
    for name in ("demo_tag", "text"):
        if not params.get(name):
            params.pop(name, None)
