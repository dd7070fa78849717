"""Prompt templates (``--prompt-template``): the policy prompt's wording in a file, with checked {placeholders}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from conceptseg.model.episode import Box, format_boxes
from conceptseg.errors import ConceptSegError
from conceptseg.model.prompts import output_format


# What a template may use. Required: the task and the answer format (the parser needs it).
TEMPLATE_FIELDS = {
    "question": "the task text (a concept name, a query)",
    "reference_boxes": "the red boxes drawn on the reference mosaic, [[x1, y1, x2, y2], ...] at 600², "
                       "or N/A when there are none",
    "check": "the instruction to re-find the withheld top-left box (empty when the episode withholds none)",
    "output_format": "the tagged answer line, with <check> when the episode withholds a box",
}


REQUIRED_FIELDS = ("question", "output_format")


# A prompt is a few hundred words (the built-in one is ~1,000 characters): anything much longer
# is a wrong file, and every character of it reaches the tokenizer and the policy on every target.
MAX_TEMPLATE_CHARS = 20_000


# Each placeholder at most this often: the question (a user's text) is repeated in the prompt that many times.
MAX_PLACEHOLDER_USES = 8


_BOM = "\ufeff"


class PromptTemplateError(ConceptSegError):
    """A prompt template file is missing, unreadable, or uses the wrong placeholders."""


@dataclass(frozen=True)
class PromptTemplate:
    """A user's wording of the policy prompt, with named placeholders ({question}, ...)."""

    text: str
    source: str = "<text>"

    def __post_init__(self):
        """Validates the template whole, so that rendering it cannot fail or blow up.

        Placeholders are bare names from TEMPLATE_FIELDS: no conversion (``{question!r}``), no
        format spec (``{question:>50000000}`` would pad to 50 MB), no attribute or index; the
        text is at most MAX_TEMPLATE_CHARS; a leading UTF-8 byte order mark is dropped.
        """
        import string

        if not isinstance(self.text, str):
            raise PromptTemplateError(f"Prompt template {self.source}: the template must be text, "
                                      f"not {type(self.text).__name__}.")
        if self.text.startswith(_BOM):  # written by some editors; it must not reach the prompt
            object.__setattr__(self, "text", self.text[len(_BOM):])
        if len(self.text) > MAX_TEMPLATE_CHARS:
            raise PromptTemplateError(
                f"Prompt template {self.source} is {len(self.text):,} characters; a template may have at most "
                f"{MAX_TEMPLATE_CHARS:,} (a prompt is a few hundred words): is it the right file?"
            )
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as e:  # an unmatched { or }
            raise PromptTemplateError(f"Prompt template {self.source}: {e}; write a literal brace as {{{{ or }}}}.") from e
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if conversion is not None or spec:
                shown = "{" + name + (f"!{conversion}" if conversion is not None else "") + (f":{spec}" if spec else "") + "}"
                raise PromptTemplateError(
                    f"Prompt template {self.source} has the placeholder {shown[:60]}: a placeholder is a bare name "
                    "such as {question}, without a conversion (!r) or a format (:...); write a literal brace as "
                    "{{ or }}."
                )
        uses = [name for _, name, _, _ in parsed if name is not None]
        names = set(uses)
        unknown = sorted(n for n in names if n not in TEMPLATE_FIELDS)
        if unknown:
            raise PromptTemplateError(
                f"Prompt template {self.source} uses unknown placeholders {', '.join('{' + n[:40] + '}' for n in unknown[:5])}; "
                f"known: {', '.join('{' + n + '}' for n in TEMPLATE_FIELDS)}."
            )
        missing = [n for n in REQUIRED_FIELDS if n not in names]
        if missing:
            raise PromptTemplateError(
                f"Prompt template {self.source} lacks the placeholders {', '.join('{' + n + '}' for n in missing)}: "
                + "; ".join(f"{{{n}}} is {TEMPLATE_FIELDS[n]}" for n in missing) + "."
            )
        repeated = sorted(n for n in names if uses.count(n) > MAX_PLACEHOLDER_USES)
        if repeated:
            raise PromptTemplateError(
                f"Prompt template {self.source} uses {', '.join('{' + n + '}' for n in repeated)} more than "
                f"{MAX_PLACEHOLDER_USES} times; a placeholder is written once or a few times."
            )

    def render(self, question: str, reference_boxes: Sequence[Box], with_references: bool, with_check: bool) -> str:
        """The user-turn text for one episode."""
        check = (" Check the rule first: locate the one example in the top-left tile of the Reference Image "
                 "whose box is not drawn, and give its box inside <check>.") if with_check else ""
        boxes = format_boxes(reference_boxes) if len(reference_boxes) > 0 else "N/A"
        return self.text.format(question=question.strip(), reference_boxes=boxes, check=check,
                                output_format=output_format(with_check))


def load_prompt_template(path: str) -> PromptTemplate:
    """Reads and validates a prompt template file (UTF-8 text, a byte order mark dropped).

    Only a regular file is read (a FIFO or a device would block or never end), and no more of
    it than a template may hold.
    """
    import os
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise PromptTemplateError(f"Cannot read the prompt template {path}: it is not a file.")
        with open(path, encoding="utf-8-sig") as f:
            text = f.read(MAX_TEMPLATE_CHARS + 1)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: a NUL in the path
        raise PromptTemplateError(f"Cannot read the prompt template {path}: {e}") from e
    if len(text) > MAX_TEMPLATE_CHARS:
        raise PromptTemplateError(
            f"Prompt template {path} is over {MAX_TEMPLATE_CHARS:,} characters; a template may have at most "
            f"{MAX_TEMPLATE_CHARS:,} (a prompt is a few hundred words): is it the right file?"
        )
    return PromptTemplate(text, path)
