"""Reading the LLM's replies to AxBench's generation templates (`templates`) as its `generate` stage reads them.

Genre: any of text/code/math the reply names, in that order; "none", or nothing named, means text. Related words:
one per line. Another meaning: kept only when it is a real description (more than one word, no "none"). The
contrast filter: the reply's last "Answer" must say yes. (Responses are read by `responses`, which also cuts them to
the target tokenizer's budget.)
"""

from __future__ import annotations

from axjax.data_generation.seed_instructions import GENRES


def genres(reply: str) -> list[str]:
  """The concept's genres from a T_DETERMINE_GENRE reply (AxBench's "none" -> text rule)."""
  lowered = reply.lower()
  named = [] if "none" in lowered else [g for g in GENRES if g in lowered]
  return named or ["text"]


def related_words(reply: str) -> list[str]:
  """The words of a T_CONCEPT_TO_WORDS reply, one per line, blanks and a bare <NONE> dropped."""
  words = [line.strip() for line in reply.splitlines()]
  return [w for w in words if w and w.upper() != "<NONE>"]


def other_meaning(reply: str) -> str | None:
  """A T_WORD_POLYSEMANTIC_MEANING reply's meaning, None where it has none (a "none", empty, or one word)."""
  text = reply.strip()
  return None if "none" in text.lower() or len(text.split()) <= 1 else text


def is_distinct(reply: str) -> bool:
  """Whether a T_FILTER_CONTRAST_CONCEPT reply concludes that the contrast concept is unrelated (its last
  "Answer" says yes)."""
  return "yes" in reply.split("Answer")[-1].lower()

