"""Remote zoo source for ConceptSeg-R1 models: download, load, and the App's form.

Each function is a few lines over the engine (``conceptseg.model.zoo`` and
``conceptseg.runs.zoo_model``). The engine ships in the plugin's ``plugin/`` directory; this file
finds it there (see ``use_plugin_engine``), so it needs no pip install.
"""

import os
import sys

PLUGIN_NAME = "@conceptseg/conceptseg-r1"


def use_plugin_engine() -> None:
    """Puts the plugin's own engine (its ``plugin/`` directory) first on sys.path.

    The plugin's copy wins even over a pip-installed conceptseg: the operators, this zoo
    source and the engine are released together, and an engine of another version would fail
    in ways no form can explain (a source checkout's ``pip install -e .`` points at the same
    files anyway). Only an engine already imported in this process is kept, since swapping a
    loaded package is unsafe. Idempotent: the plugin's __init__.py calls it on every registry
    build. FiftyOne imports this file from the plugin directory or from its model zoo directory,
    as a link to a source checkout (``conceptseg install-plugin``, resolved to the checkout) or
    as a copy (``fiftyone zoo models register-source``, which uses the installed plugin's engine).
    """
    if "conceptseg" in sys.modules:
        return
    engine_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "plugin")
    if not os.path.isdir(os.path.join(engine_dir, "conceptseg")):
        import fiftyone.plugins as fop

        try:
            engine_dir = os.path.join(fop.find_plugin(PLUGIN_NAME), "plugin")
        except ValueError:  # the plugin is not installed: a pip-installed engine, if any
            return
    if sys.path[:1] != [engine_dir]:
        if engine_dir in sys.path:
            sys.path.remove(engine_dir)
        sys.path.insert(0, engine_dir)


def download_model(model_name, model_path):
    """Fetches the model into ``model_path`` (idempotent: FiftyOne calls it on every load)."""
    use_plugin_engine()
    from conceptseg.model.zoo import download_zoo_bundle

    download_zoo_bundle(model_name, model_path)


def load_model(model_name, model_path, bundle=None, **kwargs):
    """Builds the FiftyOne model; ``bundle`` (a local bundle directory) replaces the download.

    Other keyword arguments are ConceptSegModelConfig fields: demonstrations or demo_tag
    (+ mask_field, classes), or text; route, threshold, concept, output. Without any, the
    model loads and takes them as attributes before apply_model.
    """
    use_plugin_engine()
    from conceptseg.runs.zoo_model import ConceptSegModel, ConceptSegModelConfig

    return ConceptSegModel(ConceptSegModelConfig(bundle=bundle or model_path, **kwargs))


def resolve_input(model_name, ctx):
    """The form FiftyOne's "Apply zoo model" operator shows for these models."""
    import fiftyone.operators.types as types

    inputs = types.Object()
    inputs.str("text", label="Text query", description="What to segment (leave empty to use demonstrations)")
    inputs.str("demo_tag", label="Demonstration tag", description="Samples with this tag teach the concept")
    inputs.str("mask_field", default="ground_truth", label="Demonstrations' mask field")
    inputs.enum("route", ["auto", "appearance", "object", "prototype", "reasoning-fast", "reasoning"], default="auto", label="Route")
    inputs.enum("output", ["segmentation", "instances", "both"], default="segmentation", label="Output")
    return types.Property(inputs)


def parse_parameters(model_name, ctx, params):
    """Drops the form's empty choices: the tag is read from the dataset apply_model runs on."""
    for name in ("demo_tag", "text"):
        if not params.get(name):
            params.pop(name, None)
