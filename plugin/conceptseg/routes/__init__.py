"""Routes from demonstrations to masks, cheapest first.

``ROUTES`` names every route the router may take; later routes (prototype on SAM2,
reasoning with the policy) join this table.
"""

from conceptseg.routes.appearance import AppearanceConfig, AppearanceRoute
from conceptseg.routes.base import Route, mask_iou

ROUTES: dict[str, type[Route]] = {AppearanceRoute.name: AppearanceRoute}

__all__ = ["ROUTES", "AppearanceConfig", "AppearanceRoute", "Route", "mask_iou"]
