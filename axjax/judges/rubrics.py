"""The three judge prompts (concept, instruction, fluency) and the strict parser of their `Rating: [[N]]` line.

Same 0/1/2 anchors as AxBench's rubrics (paper App. J.3), in our own words; no backend, so any judge can share them.
"""

from __future__ import annotations

import re

import numpy as np

from axjax.judges.base import RatingRequest

_ANSWER_FORMAT = """First explain your judgement in two or three sentences. Then give your rating on a line of its \
own, written exactly as `Rating: [[N]]` with N being 0, 1 or 2."""

CONCEPT = """You are a neutral judge. Decide whether the text fragment below contains the given concept. Judge only \
whether the concept is clearly there; ignore grammar and whether the text makes sense.

Point to the parts of the fragment that express the concept, and say whether they are sparse or forced. Score 0 if \
the concept does not appear at all, 1 if it appears only a little or is worked in awkwardly, and 2 if it is present \
substantially and woven in naturally.

""" + _ANSWER_FORMAT + """

<concept>
{concept}
</concept>

<fragment>
{generation}
</fragment>
"""

INSTRUCTION = """You are a neutral judge. Decide whether the text fragment below is about the same topic as the \
instruction. Judge only how closely the topics match; ignore grammar, coherence and how informative the text is.

Point to the parts of the fragment that relate to the instruction. Score 0 if the fragment has nothing to do with \
the instruction, 1 if it touches the instruction's topic only slightly or indirectly, and 2 if it clearly and \
directly addresses it.

""" + _ANSWER_FORMAT + """

<instruction>
{instruction}
</instruction>

<fragment>
{generation}
</fragment>
"""

FLUENCY = """You are a neutral judge. Decide how fluent the text fragment below is. Judge only fluency; ignore \
whether it is complete, on topic, consistent with any wider context or informative.

Note unnatural wording, clumsy transitions, grammar mistakes and repetition that make it harder to read. Score 0 \
if the fragment is not fluent at all (for example incomprehensible or repetitive), 1 if it is fairly fluent but has \
noticeable mistakes or awkward wording, and 2 if it is fluent and close to flawless.

""" + _ANSWER_FORMAT + """

<fragment>
{generation}
</fragment>
"""

# `Rating: [[N]]`, also in markdown bold (`**Rating:** [[2]]`, `**Rating: [[2]]**`); the payload is checked after.
_RATING = re.compile(r"Rating:\s*(?:\*\*)?\s*\[\[\s*([^\[\]\n]*?)\s*\]\]")


def prompts(request: RatingRequest) -> tuple[str, str, str]:
  """The judge prompts for one generation, in ASPECTS order (concept, instruction, fluency)."""
  return (CONCEPT.format(concept=request.concept, generation=request.generation),
          INSTRUCTION.format(instruction=request.instruction, generation=request.generation),
          FLUENCY.format(generation=request.generation))


def parse_rating(reply: str) -> int | None:
  """The last `Rating: [[N]]` in a reply if N is 0, 1 or 2; None otherwise (the judge then scores 0, as AxBench)."""
  found = _RATING.findall(reply)
  if not found or found[-1] not in ("0", "1", "2"):
    return None
  return int(found[-1])


def rating_matrix(rows: list[tuple[str, str, str]], replies: dict[str, str]) -> tuple[np.ndarray, int]:
  """int8 [len(rows), 3] ratings of each row's three prompts from the replies (unparseable ones 0, as AxBench),
  and how many distinct replies were unparseable."""
  ratings = {p: parse_rating(replies[p]) for p in dict.fromkeys(p for row in rows for p in row)}
  matrix = np.array([[ratings[p] or 0 for p in row] for row in rows], np.int8).reshape(len(rows), 3)
  return matrix, sum(r is None for r in ratings.values())
