"""ConceptSeg-R1 engine: segment a concept from a few demonstrations.

Importing this package is cheap: FiftyOne, torch and scikit-learn load only in the
modules that need them.
"""

__version__ = "0.1.0"
