"""Errors a user can cause: each message says what to do about it."""


class ConceptSegError(Exception):
    """Base class for every error the user can fix."""


class DemonstrationError(ConceptSegError):
    """The demonstrations cannot teach a concept (missing, empty or misshapen masks)."""


class ImageReadError(ConceptSegError):
    """An image file cannot be read or decoded."""


class FieldError(ConceptSegError):
    """A dataset field is missing, of the wrong type, or would be overwritten."""


class EmptyViewError(ConceptSegError):
    """A view that must hold samples holds none."""


class SetupError(ConceptSegError):
    """The installation is incomplete (no database, plugin not linked, data missing)."""
