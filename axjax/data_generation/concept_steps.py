"""The per-concept LLM steps of AxBench's generator that precede any response: each concept's genres and its
contrast concepts (for hard negatives), asked in batches through a `prompting.Writer` (an OpenAI-compatible
endpoint or a local axjax model) and read with `replies`.

Contrast concepts follow AxBench's `get_contrast_concepts`: up to 10 words related to the concept, another
meaning of each word, and a filter that keeps a meaning only when the LLM judges it entirely unrelated to the
concept. Each step sends every concept's prompts in one `complete` call, so a batched client runs them together.
"""

from __future__ import annotations

from typing import Sequence

from axjax.data_generation import replies, templates
from axjax.errors import AxjaxError
from axjax.methods.prompting import Writer


def ask(writer: Writer, prompts: Sequence[str], draw: int = 0) -> list[str]:
  """The writer's replies, one per prompt (draw k > 0: its k-th independent replies, for a retry), or one
  sentence if it returns another number."""
  if not prompts:
    return []
  answers = writer.complete(list(prompts)) if draw == 0 else writer.complete(list(prompts), draw=draw)
  if len(answers) != len(prompts):
    raise AxjaxError(f"the LLM {writer.name} returned {len(answers)} replies for {len(prompts)} prompts")
  return answers


def concept_genres(writer: Writer, concepts: Sequence[str]) -> dict[str, list[str]]:
  """{concept: genres} from T_DETERMINE_GENRE (text where the LLM names none)."""
  answers = ask(writer, [templates.T_DETERMINE_GENRE.format(CONCEPT=c) for c in concepts])
  return {c: replies.genres(a) for c, a in zip(concepts, answers)}


def contrast_concepts(writer: Writer, concepts: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
  """{concept: [(word, its other meaning), ...]}: the meanings the filter judged unrelated to the concept."""
  words = [replies.related_words(a) for a in
           ask(writer, [templates.T_CONCEPT_TO_WORDS.format(CONCEPT=c) for c in concepts])]
  pairs = [(c, w) for c, ws in zip(concepts, words) for w in ws]
  meanings = ask(writer, [templates.T_WORD_POLYSEMANTIC_MEANING.format(WORD=w, CONCEPT=c) for c, w in pairs])
  candidates = [(c, w, m) for (c, w), m in zip(pairs, map(replies.other_meaning, meanings)) if m is not None]
  verdicts = ask(writer, [templates.T_FILTER_CONTRAST_CONCEPT.format(CONTRAST_CONCEPT=m, CONCEPT=c)
                           for c, _, m in candidates])
  out: dict[str, list[tuple[str, str]]] = {c: [] for c in concepts}
  for (c, w, m), verdict in zip(candidates, verdicts):
    if replies.is_distinct(verdict):
      out[c].append((w, m))
  return out
