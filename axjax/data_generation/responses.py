"""The LLM-written responses of AxBench's generator, cut to the target model's token budget.

- `with_concept` (T_RESPONSE_WITH_CONCEPT): training positives (train-split instructions) and latent-eval
  positives (test split);
- `without_concept` (T_RESPONSE_WITHOUT_CONCEPT): latent-eval negatives;
- `with_contrast` (T_RESPONSE_WITH_CONTRAST_CONCEPT): hard negatives, a related word in its unrelated meaning.
As AxBench's prompt_utils: each reply loses surrounding spaces and quotes (the contrast replies also leading
`<...>` tags and periods), then is cut to `length` tokens of the target model's tokenizer and detokenised. An empty
reply gives None; `with_retries` asks again for those (independent draws), and what is still None after the
retries is the caller's to report.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence, TypeVar

from axjax.data_generation import templates
from axjax.data_generation.concept_steps import ask
from axjax.methods.prompting import Writer

_TAGS = re.compile(r"^(<[^>]*>\s*)+")
T = TypeVar("T")


def cut(tokenizer, text: str, length: int) -> str | None:
  """`text`'s first `length` tokens under `tokenizer`, as a string; None when nothing is left."""
  kept = tokenizer.convert_tokens_to_string(tokenizer.tokenize(text)[:length]).strip()
  return kept or None


def with_concept(writer: Writer, tokenizer, concept: str, instructions: Sequence[str], length: int, draw: int = 0
                 ) -> list[str | None]:
  """A response to each instruction that brings in the concept."""
  answers = ask(writer, [templates.T_RESPONSE_WITH_CONCEPT.format(INSTRUCTION=i, CONCEPT=concept)
                          for i in instructions], draw)
  return [cut(tokenizer, a.strip(" '").strip('"'), length) for a in answers]


def without_concept(writer: Writer, tokenizer, concept: str, instructions: Sequence[str], length: int,
                    draw: int = 0) -> list[str | None]:
  """A response to each instruction that avoids the concept."""
  answers = ask(writer, [templates.T_RESPONSE_WITHOUT_CONCEPT.format(INSTRUCTION=i, CONCEPT=concept)
                          for i in instructions], draw)
  return [cut(tokenizer, a.strip(" '").strip('"'), length) for a in answers]


def with_contrast(writer: Writer, tokenizer, concept: str, contrasts: Sequence[tuple[str, str]],
                  instructions: Sequence[str], length: int, draw: int = 0) -> list[str | None]:
  """A response to instruction k that uses contrast k's word in its other meaning."""
  answers = ask(writer, [templates.T_RESPONSE_WITH_CONTRAST_CONCEPT.format(
      INSTRUCTION=i, CONCEPT=concept, WORD=w, CONTRAST_CONCEPT=m) for (w, m), i in zip(contrasts, instructions)],
      draw)
  return [cut(tokenizer, _TAGS.sub("", a).strip(" .'").strip('"'), length) for a in answers]


def with_retries(respond: Callable[[Sequence[T], int], list[str | None]], items: Sequence[T], retries: int
                 ) -> list[str | None]:
  """`respond(items, draw)` for every item, then again (draws 1..retries) for the items whose response is still
  None; None where every draw failed."""
  out = respond(items, 0)
  for draw in range(1, retries + 1):
    todo = [k for k, r in enumerate(out) if r is None]
    if not todo:
      break
    for k, r in zip(todo, respond([items[k] for k in todo], draw)):
      out[k] = r
  return out
