"""Remote zoo source for ConceptSeg-R1 models (entries arrive with the reasoning route)."""


def download_model(model_name, model_path):
    """Fetches a model's files into ``model_path``."""
    raise ValueError(f"Unknown ConceptSeg model {model_name!r}; this source lists no models yet.")


def load_model(model_name, model_path, **kwargs):
    """Builds the FiftyOne model for a downloaded entry."""
    raise ValueError(f"Unknown ConceptSeg model {model_name!r}; this source lists no models yet.")
