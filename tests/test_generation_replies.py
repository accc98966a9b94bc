"""Reading the LLM's replies to AxBench's generation templates: the cases AxBench's own unit tests and code
handle (genre "none" -> text, several genres, the contrast filter's last Answer), and the templates' fields."""

import re
import string

import pytest

from axjax.data_generation import replies, templates


@pytest.mark.parametrize("reply, expected", [
    ("Text", ["text"]), ("Code", ["code"]), ("Math", ["math"]), ("<NONE>", ["text"]), ("none", ["text"]),
    ("Code; Math", ["code", "math"]), ("Poetry", ["text"]), ("  math\n", ["math"]),
])
def test_genres(reply, expected):
  assert replies.genres(reply) == expected


def test_related_words_are_one_per_line():
  assert replies.related_words("bank\n  river \n\nloan\n") == ["bank", "river", "loan"]
  assert replies.related_words("<NONE>") == []


@pytest.mark.parametrize("reply, expected", [
    ("the side of a river", "the side of a river"), ("<NONE>", None), ("None of them", None), ("river", None),
    ("", None),
])
def test_other_meaning(reply, expected):
  assert replies.other_meaning(reply) == expected


@pytest.mark.parametrize("reply, expected", [
    ("They share nothing.\nAnswer: <YES>", True), ("Answer: <NO>", False),
    ("At first: Answer: <YES>. On reflection they overlap.\nAnswer: <NO>", False), ("no verdict", False),
])
def test_is_distinct_reads_the_last_answer(reply, expected):
  assert replies.is_distinct(reply) is expected


@pytest.mark.parametrize("name, fields", [
    ("T_DETERMINE_GENRE", {"CONCEPT"}), ("T_CONCEPT_TO_WORDS", {"CONCEPT"}),
    ("T_WORD_POLYSEMANTIC_MEANING", {"WORD", "CONCEPT"}), ("T_FILTER_CONTRAST_CONCEPT", {"CONTRAST_CONCEPT", "CONCEPT"}),
    ("T_RESPONSE", {"INSTRUCTION"}), ("T_RESPONSE_WITH_CONCEPT", {"CONCEPT", "INSTRUCTION"}),
    ("T_RESPONSE_WITHOUT_CONCEPT", {"CONCEPT", "INSTRUCTION"}),
    ("T_RESPONSE_WITH_CONTRAST_CONCEPT", {"CONCEPT", "CONTRAST_CONCEPT", "INSTRUCTION", "WORD"}),
])
def test_each_template_formats_with_exactly_its_fields(name, fields):
  template = getattr(templates, name)
  assert {f for _, f, _, _ in string.Formatter().parse(template) if f} == fields
  filled = template.format(**{f: f"<{f.lower()}>" for f in fields})
  assert not re.search(r"\{[A-Z_]+\}", filled) and all(f"<{f.lower()}>" in filled for f in fields)
