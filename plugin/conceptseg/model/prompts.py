"""Policy prompt, completion parsing and box IoU (method.md §2.3, §2.5).

The user turn follows two images, the reference canvas then the 600² target (one image, the
target, when there are no references). The policy answers with tagged sections, in order:

    <think>…</think> <rule>…</rule> [<check>[x1, y1, x2, y2]</check>]
    <bbox>[x1, y1, x2, y2]</bbox> <answer>noun phrase</answer>

Parsing is strict like the official format reward: only whitespace may sit between the tags.
Leading/trailing whitespace and trailing end-of-text tokens are tolerated.
A user's ``PromptTemplate`` (named placeholders, validated) can replace the built-in wording. A tag repeated in a
row (e.g. two ``<bbox>`` blocks) is accepted and the LAST one is used, as the official box
reward does; any other repetition is an order error. Unlike the official box reward, a last
``<bbox>`` that is malformed is an error rather than falling back to an earlier valid one.
The template text is paraphrased, not copied from the official code.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Sequence

from conceptseg.model.episode import TARGET_SIZE, Box, format_boxes
from conceptseg.errors import ConceptSegError

SYSTEM_PROMPT = "You are a helpful assistant."

TAGS = ("think", "rule", "check", "bbox", "answer")
# Qwen2.5-VL's end-of-turn / end-of-text specials; a sampled completion may end with them.
END_OF_TEXT_TOKENS = ("<|im_end|>", "<|endoftext|>")

_OPEN_TAG = re.compile(r"<(" + "|".join(TAGS) + r")>")
# ASCII digits only: int() would also accept e.g. Arabic-Indic digits and "1_000".
_INTEGER = re.compile(r"-?[0-9]+")
# Longer literals are out of range anyway, and int() refuses > 4300 digits with ValueError.
_MAX_DIGITS = 12

_BOX_TEXT = "[x1, y1, x2, y2]"


class CompletionParseError(ConceptSegError):
    """A completion does not follow the required tagged format."""


class MissingTagError(CompletionParseError):
    """A required tag is absent, or opened and never closed."""


class TagOrderError(CompletionParseError):
    """The tags are all there but not in the required order."""


class BoxFormatError(CompletionParseError):
    """A box is not 4 in-range integers with x1 <= x2 and y1 <= y2."""


@dataclass
class Completion:
    """One parsed policy completion; boxes are inclusive pixel coordinates at 600²."""

    think: str
    rule: str
    check: Box | None
    bbox: Box | None
    answer: str
    raw: str


def output_format(with_check: bool) -> str:
    """The output line the policy must follow."""
    check = f" <check>{_BOX_TEXT}</check>" if with_check else ""
    return (
        "<think>step-by-step reasoning</think> <rule>the visual rule</rule>"
        f"{check} <bbox>{_BOX_TEXT}</bbox> <answer>noun phrase</answer>"
    )


def build_prompt(
    question: str,
    reference_boxes: Sequence[Box] = (),
    with_references: bool = True,
    with_check: bool = False,
    template=None,
) -> str:
    """User-turn text that follows the images (reference canvas first, then the target).

    ``template`` (a :class:`~conceptseg.model.templates.PromptTemplate`) replaces the built-in wording (e.g. with the official one, which the
    released model was trained on); the checks on the arguments stay the same.
    """
    # These are caller bugs, not user input: the episode decides references and check.
    if with_check and not with_references:
        raise ValueError("with_check needs with_references: the check is made on the references")
    if with_check and len(reference_boxes) == 0:
        raise ValueError("with_check needs reference_boxes: a mosaic lists its red boxes")
    if len(reference_boxes) > 0 and not with_references:
        raise ValueError("reference_boxes were given with with_references=False")
    for box in reference_boxes:
        if len(box) != 4:
            raise ValueError(f"a reference box needs 4 coordinates, got {box!r}")
    question = question.strip()
    if not question and not with_references:
        raise ValueError("a prompt without references needs a non-empty question")
    if template is not None:
        return template.render(question, reference_boxes, with_references, with_check)

    size = f"{TARGET_SIZE}x{TARGET_SIZE}"
    lines = [_task_line(question)]
    if with_references:
        lines.append(_images_line(reference_boxes))
        shown = "the objects in red boxes" if len(reference_boxes) > 0 else "the concept it shows"
        steps = (
            "Reason step by step. Work out from the Reference Image the visual rule that "
            f"picks out {shown} and state it."
        )
        if with_check:
            steps += (
                " Test that rule first: the top-left tile of the Reference Image holds one more "
                "example whose box is not drawn; locate it and give its box in the Reference "
                f"Image's {size} pixel coordinates inside <check>."
            )
        steps += " Then apply the rule to the Target Image."
    else:
        lines.append("Images: Reference: none; Target Image: the only image given.")
        steps = (
            "Reason step by step. State the visual rule that identifies the object the task "
            "describes, then apply it to the Target Image."
        )
    lines.append(steps)
    lines.append(
        f"Give the box of the matching object in the Target Image's {size} pixel coordinates, "
        "and name it with a noun phrase of one or two words."
    )
    lines.append(f"Answer in exactly this format: {output_format(with_check)}")
    return "\n".join(lines)


def _task_line(question: str) -> str:
    # Demonstrations alone can define the concept, so an empty question is allowed with them.
    query = f'the object described as "{question}"' if question else "the concept the Reference Image demonstrates"
    return f"Task: in the Target Image, find {query}."


def _images_line(reference_boxes: Sequence[Box]) -> str:
    size = f"{TARGET_SIZE}x{TARGET_SIZE}"
    listed = f" (red boxes drawn at {format_boxes(reference_boxes)}, {size} pixel coordinates)" if len(reference_boxes) else ""
    return f"Images: (1) Reference Image{listed}; (2) Target Image."


def _strip_end(text: str) -> str:
    """Drop surrounding whitespace and any trailing end-of-text tokens."""
    text = text.strip()
    stripped = True
    while stripped:
        stripped = False
        for token in END_OF_TEXT_TOKENS:
            if text.endswith(token):
                text = text[: -len(token)].rstrip()
                stripped = True
    return text


def _blocks(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Text → [(tag, content)] in order, and the text found between/around the blocks."""
    blocks: list[tuple[str, str]] = []
    gaps: list[str] = []
    pos = 0
    while (match := _OPEN_TAG.search(text, pos)) is not None:
        name = match.group(1)
        close = f"</{name}>"
        # Lazy: the first closing tag ends the block, as the official regex's ".*?" does.
        end = text.find(close, match.end())
        if end < 0:
            raise MissingTagError(f"<{name}> is opened but never closed with {close}")
        gaps.append(text[pos : match.start()])
        blocks.append((name, text[match.end() : end]))
        pos = end + len(close)
    gaps.append(text[pos:])
    return blocks, gaps


def _parse_box(name: str, content: str, size: int) -> Box:
    """'[x1, y1, x2, y2]' → Box, or BoxFormatError naming what is wrong."""
    body = content.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise BoxFormatError(f"<{name}> must hold [x1, y1, x2, y2], got {body[:60]!r}")
    parts = [part.strip() for part in body[1:-1].split(",")]
    if len(parts) != 4 or not all(_INTEGER.fullmatch(part) for part in parts):
        raise BoxFormatError(f"<{name}> must hold exactly 4 integers, got {body[:60]!r}")
    if any(len(part.lstrip("-")) > _MAX_DIGITS for part in parts):
        raise BoxFormatError(f"<{name}> has a coordinate outside [0, {size - 1}]: {body[:60]!r}")
    x1, y1, x2, y2 = (int(part) for part in parts)
    if not all(0 <= v <= size - 1 for v in (x1, y1, x2, y2)):
        raise BoxFormatError(f"<{name}> has a coordinate outside [0, {size - 1}]: {body[:60]!r}")
    if x1 > x2 or y1 > y2:
        raise BoxFormatError(f"<{name}> is inverted (needs x1 <= x2 and y1 <= y2): {body[:60]!r}")
    return x1, y1, x2, y2


def parse_completion(text: str, require_check: bool = False, size: int = TARGET_SIZE) -> Completion:
    """Strictly parse a completion; raises a CompletionParseError subclass when malformed."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    blocks, gaps = _blocks(_strip_end(text))
    present = {name for name, _ in blocks}
    required = [t for t in TAGS if require_check or t != "check"]
    for name in required:
        if name not in present:
            raise MissingTagError(f"the completion has no <{name}>…</{name}>")

    # A tag repeated in a row counts once (the last block wins below); the resulting sequence
    # must be exactly the required one, with an unrequired <check> allowed in its place.
    sequence = [name for i, (name, _) in enumerate(blocks) if i == 0 or blocks[i - 1][0] != name]
    allowed = [required] if require_check else [required, list(TAGS)]
    if sequence not in allowed:
        found = " ".join(f"<{n}>" for n in sequence)
        expected = "<think> <rule> <check> <bbox> <answer>"
        if not require_check:
            expected = expected.replace("<check>", "[<check>]")
        raise TagOrderError(f"tags appear as {found}; expected {expected}")
    for gap in gaps:
        if gap.strip():
            stray = gap.strip()[:60]
            raise CompletionParseError(f"text outside the tags is not allowed: {stray!r}")

    last = {name: content for name, content in blocks}  # later blocks overwrite earlier ones
    return Completion(
        think=last["think"].strip(),
        rule=last["rule"].strip(),
        check=_parse_box("check", last["check"], size) if "check" in last else None,
        bbox=_parse_box("bbox", last["bbox"], size),
        answer=last["answer"].strip(),
        raw=text,
    )


# ---- rule reuse (the reasoning-fast route) ------------------------------------------------
#
# The rule is induced once per demonstration set; every target then gets this prompt, which
# states the rule and asks for the box and the name only, so the policy writes a few dozen
# tokens instead of a chain of thought. The images are the same two as in a full episode.

FAST_OUTPUT_FORMAT = f"<bbox>{_BOX_TEXT}</bbox> <answer>noun phrase</answer>"


def build_fast_prompt(question: str, rule: str, reference_boxes: Sequence[Box] = ()) -> str:
    """User-turn text that applies a known ``rule`` to the Target Image (no reasoning asked for)."""
    if not rule.strip():
        raise ValueError("a rule-reuse prompt needs the rule")
    size = f"{TARGET_SIZE}x{TARGET_SIZE}"
    return "\n".join([
        _task_line(question.strip()),
        _images_line(reference_boxes),
        f"The visual rule that picks out the examples in the Reference Image is known: {rule.strip()}",
        f"Apply it to the Target Image. Give the box of the matching object in the Target Image's {size} pixel "
        "coordinates, and name it with a noun phrase of one or two words. Do not reason or restate the rule.",
        f"Answer in exactly this format: {FAST_OUTPUT_FORMAT}",
    ])


def parse_answer(text: str, size: int = TARGET_SIZE) -> Completion:
    """Strictly parse a rule-reuse answer: ``<bbox>…</bbox> <answer>…</answer>`` and nothing else.

    The returned Completion has empty think and rule (the caller knows the rule it gave).
    """
    blocks, gaps = _blocks(_strip_end(text))
    present = {name for name, _ in blocks}
    for name in ("bbox", "answer"):
        if name not in present:
            raise MissingTagError(f"the answer has no <{name}>…</{name}>")
    sequence = [name for i, (name, _) in enumerate(blocks) if i == 0 or blocks[i - 1][0] != name]
    if sequence != ["bbox", "answer"]:
        raise TagOrderError(f"tags appear as {' '.join(f'<{n}>' for n in sequence)}; expected <bbox> <answer>")
    stray = next((g.strip() for g in gaps if g.strip()), None)
    if stray:
        raise CompletionParseError(f"text outside the tags is not allowed: {stray[:60]!r}")
    last = dict(blocks)
    return Completion(think="", rule="", check=None, bbox=_parse_box("bbox", last["bbox"], size),
                      answer=last["answer"].strip(), raw=text)


def _box_text(name: str, box: Sequence[int]) -> str:
    """Box → '[x1, y1, x2, y2]', refusing what the parser would reject whatever the size."""
    try:
        values = [operator.index(v) for v in box]  # ints (numpy ones too), never floats
    except TypeError:
        values = []
    if len(values) != 4 or min(values) < 0 or values[0] > values[2] or values[1] > values[3]:
        raise ValueError(f"{name} must be 4 non-negative integers with x1 <= x2, y1 <= y2: {box!r}")
    return format_boxes([values])[1:-1]


def format_completion(c: Completion) -> str:
    """Canonical completion text (teacher forcing); text fields are written stripped."""
    if c.bbox is None:
        raise ValueError("a completion needs a bbox to be written")
    fields = {"think": c.think.strip(), "rule": c.rule.strip(), "answer": c.answer.strip()}
    for name, value in fields.items():
        # Its own closing tag would end the block early and the text would not parse back.
        if f"</{name}>" in value:
            raise ValueError(f"the {name} text contains </{name}>")
    parts = [f"<think>{fields['think']}</think>", f"<rule>{fields['rule']}</rule>"]
    if c.check is not None:
        parts.append(f"<check>{_box_text('check', c.check)}</check>")
    parts.append(f"<bbox>{_box_text('bbox', c.bbox)}</bbox>")
    parts.append(f"<answer>{fields['answer']}</answer>")
    return "\n".join(parts)


def box_iou(a: Box, b: Box) -> float:
    """IoU of inclusive-pixel boxes: a box covers x2 - x1 + 1 columns and y2 - y1 + 1 rows.

    The official reward uses this inclusive form for the intersection but plain areas
    ((x2 - x1) * (y2 - y1)) for the union; we use the inclusive form for both, so a box
    always has IoU 1 with itself and a one-pixel box has area 1, not 0.
    """
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(ix, 0) * max(iy, 0)
    area_a = max(a[2] - a[0] + 1, 0) * max(a[3] - a[1] + 1, 0)
    area_b = max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


# ---- a prompt template the user supplies --------------------------------------------------







