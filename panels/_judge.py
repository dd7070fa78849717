"""The mask to judge, drawn in the review panel: the open sample's image with its prediction tinted.

FiftyOne 1.22.1's modal sidebar shows a run's new field only once the App loads the dataset
again, so a reviewer could be asked to accept a mask they cannot see. The panel draws it
itself, beside Accept and Reject.
"""

import base64

import cv2
import numpy as np

LONG_SIDE = 320  # px: enough to judge a mask beside the buttons, small enough to travel as panel data
TINT = np.array([255, 128, 0], np.float32)  # orange (RGB), half over the image


def prediction_picture(filepath: str, label) -> str | None:
    """A PNG data URL of the image with ``label``'s mask tinted; None when either cannot be read."""
    from conceptseg.errors import ConceptSegError
    from conceptseg.imaging import load_rgb, to_uint8

    if label is None or (getattr(label, "mask", None) is None and not getattr(label, "mask_path", None)):
        return None
    try:
        image, mask = to_uint8(load_rgb(filepath)), label.get_mask()
    except (ConceptSegError, OSError, ValueError):
        return None  # the panel's text says what is wrong with the sample; the picture is left out
    h, w = image.shape[:2]
    scale = min(1.0, LONG_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    region = np.any(mask > 0, axis=2) if mask.ndim == 3 else mask > 0
    # To the picture's size from the mask's own (a mask may differ from its image: resize_masks).
    shown = cv2.resize(region.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    small[shown] = (0.5 * small[shown] + 0.5 * TINT).astype(np.uint8)
    ok, png = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode() if ok else None
