"""One operator per module; each parses its form and calls one engine function."""
