"""Python panels, one per module; the root __init__.py registers them."""
