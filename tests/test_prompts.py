"""Prompt templates, strict completion parsing, canonical formatting and box IoU."""

from __future__ import annotations

import random

import pytest

from conceptseg.model.episode import format_boxes
from conceptseg.errors import ConceptSegError
from conceptseg.model.prompts import (SYSTEM_PROMPT, BoxFormatError, Completion, CompletionParseError,
                                      MissingTagError, TagOrderError, box_iou, build_prompt, format_completion,
                                      parse_completion)

REFS = [(310, 20, 450, 200), (15, 320, 120, 580), (305, 305, 599, 599)]
GOOD = (
    "<think>The red boxes all hold small fish.</think> <rule>small fish</rule> "
    "<bbox>[10, 20, 30, 40]</bbox> <answer>fish</answer>"
)
GOOD_CHECK = (
    "<think>t</think><rule>r</rule><check>[1, 2, 3, 4]</check>"
    "<bbox>[10, 20, 30, 40]</bbox><answer>fish</answer>"
)


def _text(think="t", rule="r", check=None, bbox="[10, 20, 30, 40]", answer="fish"):
    """A completion built from pieces; None leaves a tag out."""
    parts = []
    for name, value in (("think", think), ("rule", rule), ("check", check), ("bbox", bbox),
                        ("answer", answer)):
        if value is not None:
            parts.append(f"<{name}>{value}</{name}>")
    return " ".join(parts)


class TestSystemPrompt:
    def test_is_the_short_convention(self):
        assert SYSTEM_PROMPT == "You are a helpful assistant."


class TestPromptWithCheck:
    prompt = build_prompt("camouflaged animal", REFS, with_check=True)

    def test_lists_the_red_boxes(self):
        assert format_boxes(REFS) in self.prompt

    def test_asks_for_the_missing_box_in_the_top_left_tile(self):
        assert "top-left" in self.prompt
        assert "<check>[x1, y1, x2, y2]</check>" in self.prompt

    def test_asks_for_every_output_tag_in_order(self):
        tags = ["<think>", "<rule>", "<check>", "<bbox>", "<answer>"]
        positions = [self.prompt.rindex(tag) for tag in tags]
        assert positions == sorted(positions)
        assert "600x600" in self.prompt
        assert "one or two words" in self.prompt

    def test_names_the_question(self):
        assert '"camouflaged animal"' in self.prompt


class TestPromptWithoutCheck:
    def test_one_demonstration_has_no_boxes_and_no_check(self):
        prompt = build_prompt("dog")
        assert "Reference Image" in prompt
        assert "<check>" not in prompt and "top-left" not in prompt
        assert "[[" not in prompt
        assert "<rule>" in prompt and "<bbox>[x1, y1, x2, y2]</bbox>" in prompt

    def test_boxes_without_check_are_still_listed(self):
        prompt = build_prompt("dog", REFS[:1])
        assert format_boxes(REFS[:1]) in prompt
        assert "<check>" not in prompt

    def test_empty_question_falls_back_to_the_demonstrations(self):
        prompt = build_prompt("  ")
        assert '""' not in prompt
        assert "Reference Image" in prompt


class TestPromptWithoutReferences:
    prompt = build_prompt("the thing you would sit on", with_references=False)

    def test_says_there_is_no_reference(self):
        assert "Reference: none" in self.prompt
        assert "Reference Image" not in self.prompt
        assert "red box" not in self.prompt

    def test_still_asks_for_think_rule_bbox_answer(self):
        for tag in ("<think>", "<rule>", "<bbox>", "<answer>"):
            assert tag in self.prompt
        assert "<check>" not in self.prompt
        assert '"the thing you would sit on"' in self.prompt


class TestPromptRejectsInvalidCombinations:
    def test_check_without_references(self):
        with pytest.raises(ValueError, match="with_references"):
            build_prompt("dog", REFS, with_references=False, with_check=True)

    def test_check_without_reference_boxes(self):
        with pytest.raises(ValueError, match="reference_boxes"):
            build_prompt("dog", (), with_check=True)

    def test_boxes_without_references(self):
        with pytest.raises(ValueError):
            build_prompt("dog", REFS, with_references=False)

    def test_box_of_wrong_length(self):
        with pytest.raises(ValueError, match="4 coordinates"):
            build_prompt("dog", [(1, 2, 3)])

    def test_no_question_and_no_references(self):
        with pytest.raises(ValueError, match="question"):
            build_prompt("", with_references=False)


class TestParseValid:
    def test_fields(self):
        c = parse_completion(GOOD)
        assert c.think == "The red boxes all hold small fish."
        assert c.rule == "small fish"
        assert c.check is None
        assert c.bbox == (10, 20, 30, 40)
        assert c.answer == "fish"
        assert c.raw == GOOD

    def test_check_required(self):
        c = parse_completion(GOOD_CHECK, require_check=True)
        assert c.check == (1, 2, 3, 4)

    def test_check_kept_when_not_required(self):
        assert parse_completion(GOOD_CHECK).check == (1, 2, 3, 4)

    def test_multi_line_think(self):
        text = _text(think="\nFirst, the red boxes.\n\nSecond, the <bbox> idea.\n")
        c = parse_completion(text)
        assert c.think == "First, the red boxes.\n\nSecond, the <bbox> idea."
        assert c.bbox == (10, 20, 30, 40)

    def test_surrounding_whitespace_and_end_of_text(self):
        c = parse_completion("\n  " + GOOD + " \n<|im_end|>\n<|endoftext|>")
        assert c.answer == "fish"

    def test_whitespace_inside_boxes(self):
        c = parse_completion(_text(bbox=" [ 0,0 ,\n599 , 599 ] "))
        assert c.bbox == (0, 0, 599, 599)

    def test_empty_text_fields_are_allowed(self):
        c = parse_completion(_text(think="", rule="", answer=""))
        assert (c.think, c.rule, c.answer) == ("", "", "")

    def test_custom_size(self):
        assert parse_completion(_text(bbox="[0, 0, 999, 999]"), size=1000).bbox == (0, 0, 999, 999)
        with pytest.raises(BoxFormatError):
            parse_completion(_text(bbox="[0, 0, 100, 100]"), size=100)


class TestSeveralBoxesUseTheLast:
    def test_last_bbox(self):
        text = _text(bbox="[1, 1, 2, 2]</bbox> <bbox>[3, 3, 9, 9]")
        assert parse_completion(text).bbox == (3, 3, 9, 9)

    def test_last_check(self):
        text = _text(check="[1, 1, 2, 2]</check>\n<check>[4, 4, 5, 5]")
        assert parse_completion(text, require_check=True).check == (4, 4, 5, 5)

    def test_last_one_must_be_valid(self):
        text = _text(bbox="[1, 1, 2, 2]</bbox> <bbox>[3, 3]")
        with pytest.raises(BoxFormatError):
            parse_completion(text)

    def test_repetition_not_in_a_row_is_an_order_error(self):
        text = GOOD + " <bbox>[1, 1, 2, 2]</bbox>"
        with pytest.raises(TagOrderError):
            parse_completion(text)


class TestMissingTags:
    @pytest.mark.parametrize("tag", ["think", "rule", "bbox", "answer"])
    def test_each_required_tag(self, tag):
        with pytest.raises(MissingTagError, match=f"<{tag}>"):
            parse_completion(_text(**{tag: None}))

    def test_check_when_required(self):
        with pytest.raises(MissingTagError, match="<check>"):
            parse_completion(GOOD, require_check=True)

    @pytest.mark.parametrize("tag", ["think", "rule", "check", "bbox", "answer"])
    def test_opened_never_closed(self, tag):
        text = GOOD_CHECK.replace(f"</{tag}>", "")
        with pytest.raises(MissingTagError, match=f"</{tag}>"):
            parse_completion(text, require_check=True)

    def test_closed_never_opened(self):
        with pytest.raises(MissingTagError, match="<rule>"):
            parse_completion(GOOD.replace("<rule>", ""))


class TestTagOrder:
    @pytest.mark.parametrize(
        "text",
        [
            "<rule>r</rule><think>t</think><bbox>[1, 1, 2, 2]</bbox><answer>a</answer>",
            "<think>t</think><rule>r</rule><answer>a</answer><bbox>[1, 1, 2, 2]</bbox>",
            "<think>t</think><bbox>[1, 1, 2, 2]</bbox><rule>r</rule><answer>a</answer>",
            "<think>t</think><rule>r</rule><bbox>[1, 1, 2, 2]</bbox><check>[1, 1, 2, 2]</check>"
            "<answer>a</answer>",
            "<think>t</think><rule>r</rule><bbox>[1, 1, 2, 2]</bbox><answer>a</answer>"
            "<think>again</think>",
        ],
    )
    def test_misordered(self, text):
        with pytest.raises(TagOrderError, match="expected"):
            parse_completion(text)

    def test_check_before_rule_when_required(self):
        text = "<think>t</think><check>[1, 1, 2, 2]</check><rule>r</rule>"
        text += "<bbox>[1, 1, 2, 2]</bbox><answer>a</answer>"
        with pytest.raises(TagOrderError):
            parse_completion(text, require_check=True)


class TestTextOutsideTags:
    @pytest.mark.parametrize(
        "text",
        ["Sure! " + GOOD, GOOD + " Hope this helps.", GOOD.replace("</rule> ", "</rule> and ")],
    )
    def test_stray_text_is_rejected(self, text):
        with pytest.raises(CompletionParseError, match="outside the tags"):
            parse_completion(text)

    def test_stray_closing_tag(self):
        with pytest.raises(CompletionParseError):
            parse_completion(GOOD + "</bbox>")


class TestBoxFormat:
    @pytest.mark.parametrize(
        "box, why",
        [
            ("[1.5, 2, 3, 4]", "4 integers"),
            ("[1, 2, 3]", "4 integers"),
            ("[1, 2, 3, 4, 5]", "4 integers"),
            ("1, 2, 3, 4", r"\[x1, y1, x2, y2\]"),
            ("[a, b, c, d]", "4 integers"),
            ("[]", "4 integers"),
            ("[١, 2, 3, 4]", "4 integers"),  # non-ASCII digits: int() would take them
            ("[1_0, 2, 3, 4]", "4 integers"),
            ("[-1, 2, 3, 4]", "outside"),
            ("[0, 0, 600, 10]", "outside"),
            ("[0, 0, 10, 600]", "outside"),
            ("[0, 0, 10, " + "9" * 5000 + "]", "outside"),  # int() refuses > 4300 digits
            ("[30, 0, 10, 10]", "inverted"),
            ("[0, 30, 10, 10]", "inverted"),
        ],
    )
    def test_bad_bbox(self, box, why):
        with pytest.raises(BoxFormatError, match=why):
            parse_completion(_text(bbox=box))

    def test_bad_check(self):
        with pytest.raises(BoxFormatError, match="<check>"):
            parse_completion(_text(check="[5, 5, 1, 1]"))

    def test_single_pixel_box(self):
        assert parse_completion(_text(bbox="[7, 7, 7, 7]")).bbox == (7, 7, 7, 7)


class TestRoundTrip:
    @pytest.mark.parametrize("check", [None, (0, 0, 299, 299)])
    def test_round_trip(self, check):
        c = Completion(
            think="Line one.\nLine two with <rule> inside.",
            rule="striped fur",
            check=check,
            bbox=(12, 34, 599, 567),
            answer="tabby cat",
            raw="",
        )
        text = format_completion(c)
        back = parse_completion(text, require_check=check is not None)
        assert back == Completion(c.think, c.rule, c.check, c.bbox, c.answer, raw=text)

    def test_parsed_completion_formats_back_to_the_same_fields(self):
        first = parse_completion(GOOD_CHECK)
        second = parse_completion(format_completion(first))
        assert (second.think, second.rule, second.check, second.bbox, second.answer) == (
            first.think, first.rule, first.check, first.bbox, first.answer)

    def test_fields_are_written_stripped(self):
        c = Completion("  t  ", " r ", None, (1, 2, 3, 4), " dog ", "")
        assert format_completion(c).startswith("<think>t</think>")
        assert parse_completion(format_completion(c)).answer == "dog"

    @pytest.mark.parametrize(
        "c",
        [
            Completion("t", "r", None, None, "a", ""),
            Completion("t", "r", None, (3, 0, 1, 1), "a", ""),
            Completion("t", "r", (1, 2, 3), (0, 0, 1, 1), "a", ""),
            Completion("t", "r", None, (0.5, 0, 1, 1), "a", ""),
            Completion("has </think> in it", "r", None, (0, 0, 1, 1), "a", ""),
        ],
    )
    def test_unwritable_completions(self, c):
        with pytest.raises(ValueError):
            format_completion(c)


_FRAGMENTS = [
    "<think>", "</think>", "<rule>", "</rule>", "<check>", "</check>", "<bbox>", "</bbox>",
    "<answer>", "</answer>", "[", "]", ",", " ", "\n", "0", "42", "599", "600", "-3", "1.5",
    "<|im_end|>", "<|endoftext|>", "<", ">", "/", "<bbox", "think>", "[1, 2, 3, 4]",
]


def _noise(rng: random.Random) -> str:
    """Tag fragments, digits and random unicode, like a random tiny model's output."""
    pieces = []
    for _ in range(rng.randint(0, 12)):
        if rng.random() < 0.6:
            pieces.append(rng.choice(_FRAGMENTS))
        else:
            pieces.append("".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(rng.randint(1, 5))))
    return "".join(pieces)


def _junk(rng: random.Random) -> str:
    """Pure noise, shuffled tag blocks with noisy contents, or a valid completion mutated."""
    kind = rng.randrange(3)
    if kind == 0:
        return _noise(rng)
    if kind == 1:
        names = ["think", "rule", "check", "bbox", "answer"]
        rng.shuffle(names)
        names = names[: rng.randint(3, 5)]
        contents = ["[1, 2, 3, 4]", "[5, 6, 700, 8]", "[9, 9, 1, 1]", "x", ""]
        return " ".join(
            f"<{n}>{rng.choice(contents) if rng.random() < 0.5 else _noise(rng)}</{n}>"
            for n in names
        )
    text = GOOD_CHECK
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(text))
        cut = rng.randint(0, 8) if rng.random() < 0.5 else 0
        text = text[:at] + (_noise(rng) if rng.random() < 0.5 else "") + text[at + cut :]
    return text


class TestGarbage:
    @pytest.mark.parametrize(
        "text", ["", " ", "<think>", "</think>", "<|im_end|>", "\x00\ufffd", "🙂" * 50, "<bbox>[]"]
    )
    def test_fixed_garbage(self, text):
        with pytest.raises(CompletionParseError):
            parse_completion(text)

    @pytest.mark.parametrize("require_check", [False, True])
    def test_random_strings_only_raise_parse_errors(self, require_check):
        rng = random.Random(1234)
        seen = set()
        for index in range(200):
            text = _junk(rng)
            try:
                parse_completion(text, require_check=require_check)
                seen.add(None)
            except CompletionParseError as error:
                seen.add(type(error))
            except Exception as error:  # noqa: BLE001 - the point is to catch any other type
                pytest.fail(f"string #{index} {text!r} raised {type(error).__name__}: {error}")
        # The strings reach every stage of the parser, not only the first check.
        expected = {MissingTagError, TagOrderError, BoxFormatError, CompletionParseError}
        assert expected <= seen

    def test_errors_are_user_errors(self):
        for cls in (MissingTagError, TagOrderError, BoxFormatError):
            assert issubclass(cls, CompletionParseError)
        assert issubclass(CompletionParseError, ConceptSegError)


class TestBoxIou:
    def test_identical(self):
        assert box_iou((10, 10, 20, 30), (10, 10, 20, 30)) == 1.0

    def test_single_pixel_with_itself(self):
        assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 1.0

    def test_disjoint(self):
        assert box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0

    def test_adjacent_boxes_share_no_pixel(self):
        assert box_iou((0, 0, 9, 9), (10, 0, 19, 9)) == 0.0

    def test_partial_overlap_by_hand(self):
        # a: columns 0..9, rows 0..9 → 100 px; b: columns 5..14, rows 0..9 → 100 px.
        # Overlap: columns 5..9 (5) x rows 0..9 (10) = 50 px. Union 100 + 100 - 50 = 150.
        assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)

    def test_nested(self):
        # Inner 2x2 = 4 px inside outer 4x4 = 16 px.
        assert box_iou((0, 0, 3, 3), (1, 1, 2, 2)) == pytest.approx(4 / 16)

    def test_symmetric(self):
        a, b = (3, 7, 40, 50), (10, 0, 60, 20)
        assert box_iou(a, b) == box_iou(b, a)


class TestPromptTemplate:
    def test_missing_placeholders_are_named(self):
        from conceptseg.model.templates import PromptTemplate, PromptTemplateError

        with pytest.raises(PromptTemplateError, match=r"lacks the placeholders \{question\}, \{output_format\}"):
            PromptTemplate("Find the thing.", "t.txt")
        with pytest.raises(PromptTemplateError, match=r"lacks the placeholders \{output_format\}"):
            PromptTemplate("Find {question}.")

    def test_unknown_placeholders_and_stray_braces_are_refused(self):
        from conceptseg.model.templates import PromptTemplate, PromptTemplateError

        with pytest.raises(PromptTemplateError, match=r"unknown placeholders \{ref_bboxes\}; known: \{question\}"):
            PromptTemplate("{question} {ref_bboxes} {output_format}")
        with pytest.raises(PromptTemplateError, match="literal brace"):
            PromptTemplate("{question} {output_format} {")
        assert "{x}" in PromptTemplate("{question} {{x}} {output_format}").render("q", [], True, False)

    def test_render_fills_every_placeholder(self):
        from conceptseg.model.templates import PromptTemplate

        t = PromptTemplate("Q={question}|B={reference_boxes}|C={check}|F={output_format}")
        with_check = t.render(" cat ", [(0, 0, 9, 9)], True, True)
        assert with_check.startswith("Q=cat|B=[[0, 0, 9, 9]]|C= Check the rule first")
        assert with_check.endswith("<check>[x1, y1, x2, y2]</check> <bbox>[x1, y1, x2, y2]</bbox> <answer>noun phrase</answer>")
        plain = t.render("cat", [], False, False)
        assert "|B=N/A|C=|" in plain and "<check>" not in plain
        assert build_prompt("cat", with_references=False, template=t) == plain

    def test_file_is_read_and_checked(self, tmp_path):
        from conceptseg.model.templates import PromptTemplateError, load_prompt_template

        path = tmp_path / "official.txt"
        path.write_text("Locate {question}.\n{output_format}\n", encoding="utf-8")
        assert load_prompt_template(str(path)).source == str(path)
        with pytest.raises(PromptTemplateError, match="Cannot read the prompt template"):
            load_prompt_template(str(tmp_path / "missing.txt"))
