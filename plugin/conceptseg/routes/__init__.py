"""Routes from demonstrations to masks, cheapest first.

``ROUTES`` names every weight-free route the router may take, in the order it tries them:
the per-pixel appearance route, then the object route (objects first, then a classifier
on whole objects; it costs more). The model routes (prototype on SAM 2, reasoning with
the policy) join them in ``router.make_router`` when a bundle is given.
"""

from conceptseg.routes import memo
from conceptseg.routes.appearance import AppearanceConfig, AppearanceRoute
from conceptseg.routes.base import Route, mask_iou
from conceptseg.routes.object import ObjectConfig, ObjectRoute

ROUTES: dict[str, type[Route]] = {AppearanceRoute.name: AppearanceRoute, ObjectRoute.name: ObjectRoute}

__all__ = ["ROUTES", "memo", "AppearanceConfig", "AppearanceRoute", "ObjectConfig", "ObjectRoute", "Route", "mask_iou"]
