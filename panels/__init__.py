"""Python panels (one per module); none is registered yet."""
