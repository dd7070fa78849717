"""Settings shared by the engine and the App's operators, importable without the engine.

This module imports nothing: an operator's form (run by FiftyOne on every request) reads
its defaults from here without loading torch, scikit-learn or the routes.
"""

# The held-out IoU a route must reach to be used (router.DEFAULT_THRESHOLD, the CLI's
# --threshold, the operator's "Verification threshold").
# 0.6, not 0.5: on shape concepts the appearance route re-finds held-out demonstrations by
# chance colour cues up to ~0.58 (benchmarks/concepts.py, seeds 0-2) while failing on new
# images; on colour concepts it verifies at 0.65 and above. The cut between lets the object
# route take the shape concepts without being told.
VERIFY_THRESHOLD = 0.6

# Every route a user may name, cheapest first (``auto`` lets the router choose): the CLI's
# --route choices and the operators' route lists. The model routes need a bundle: prototype
# one with SAM 2, exemplar one with SAM 3, the reasoning routes one with a policy.
ROUTE_NAMES = ("auto", "appearance", "object", "prototype", "exemplar", "reasoning-fast", "reasoning")

# `conceptseg annotate` and the operator "Correct the most doubtful": the annotation tools and
# how many of a run's most doubtful targets go to one by default. Here, not in the engine, so
# the CLI's parser is built without importing FiftyOne (its notice would reach --json's stdout).
ANNOTATION_BACKENDS = ("labelstudio", "cvat")
ANNOTATE_TOP = 10
