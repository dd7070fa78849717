"""SAM 3's text side: whether this transformers ships SAM 3, and the text shortcut.

A short noun phrase that SAM 3 reads well goes to it directly, without the policy's reasoning.
"""

from __future__ import annotations

import dataclasses
import math
import re


from conceptseg.errors import ConceptSegError


# The first transformers this segmenter runs on. Sam3Model ships from 5.0.0, but before 5.9.0
# it cannot take the text encoder's output as predict() passes it (5.8.1 fails, 5.9.0 passes
# tests/test_segmenter_sam3.py). A version check: no signature shows the difference.
SAM3_TRANSFORMERS = "5.9.0"


def sam3_problem() -> str | None:
    """None when this transformers runs SAM 3; else the sentence that says what to install."""
    import importlib.util

    import transformers
    from packaging.version import Version

    if (importlib.util.find_spec("transformers.models.sam3") is not None
            and Version(transformers.__version__).release >= Version(SAM3_TRANSFORMERS).release):
        return None
    return (f"SAM 3 needs transformers {SAM3_TRANSFORMERS} or newer (this environment has "
            f"{transformers.__version__}): pip install 'transformers>={SAM3_TRANSFORMERS}', or use SAM 2.")


def require_sam3() -> None:
    """Raises that sentence as a ConceptSegError when this transformers cannot run SAM 3."""
    problem = sam3_problem()
    if problem:
        raise ConceptSegError(problem)


@dataclasses.dataclass(frozen=True)
class Sam3Shortcut:
    """What ``try_shortcut`` decided: ``taken`` (use ``prediction`` and skip the MLLM), the
    threshold τ, the presence SAM 3 gave (None when it was not run) and why, in words."""

    taken: bool
    threshold: float
    presence: float | None
    prediction: object | None  # the Sam3Prediction of the text alone, when it was tried
    reason: str


def _strip_parenthesised(text: str) -> str:
    """Removes "(...)" groups, innermost first, so nested ones go too; unbalanced
    parentheses are left as they are."""
    prev = None
    while prev != text:
        prev, text = text, re.sub(r"\([^()]*\)", " ", text)
    return text


def shortcut_word_count(text: str) -> int:
    """n of the shortcut rule: whitespace-separated words after removing parenthesised text
    ("traffic cone (orange)" -> 2), as the official ConceptSeg evaluation counts them."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}.")
    return len(_strip_parenthesised(text).split())


def shortcut_threshold(text: str) -> float:
    """τ = 0.1 · 2^(n−1) for an n-word query: 0.1, 0.2, 0.4, 0.8 for 1-4 words, ≥ 1.6 beyond.

    A query with no words (empty, or only parenthesised text) gives ``math.inf``: plain
    SAM 3 has no concept to ground, so its presence score means nothing and the query always
    goes down the reasoning path. (The formula would give 0.05, i.e. the most permissive
    shortcut, for the least informative query; the official code never meets this case.)
    """
    n = shortcut_word_count(text)
    return math.inf if n == 0 else 0.1 * 2.0 ** (n - 1)


def text_shortcut(text: str, presence: float) -> bool:
    """True when plain SAM 3's answer should be used: τ < 1 and presence > τ (strict, as in
    the official single-example script; the ConceptSeg evaluation uses ≥). NaN -> False."""
    tau = shortcut_threshold(text)
    return tau < 1.0 and float(presence) > tau
