"""The generator's genre and contrast-concept steps against a scripted LLM: which prompts it asks, in how many
calls, and what it keeps (AxBench's rules: words -> other meanings -> the unrelated ones)."""

import pytest

from axjax.data_generation import templates
from axjax.data_generation.concept_steps import concept_genres, contrast_concepts
from axjax.errors import AxjaxError
from axjax.methods.prompting import Writer

CONCEPT = "references to rental services"


class Scripted:
  """A writer replying from a table of (template, fields) -> reply; records every call."""

  def __init__(self, table):
    self.table, self.calls = table, []

  def complete(self, prompts):
    self.calls.append(list(prompts))
    return [self.table[p] for p in prompts]

  def writer(self):
    return Writer("scripted", self.complete)


def test_genres_are_asked_in_one_call():
  llm = Scripted({templates.T_DETERMINE_GENRE.format(CONCEPT="integrals"): "Math",
                  templates.T_DETERMINE_GENRE.format(CONCEPT=CONCEPT): "<NONE>"})
  assert concept_genres(llm.writer(), ["integrals", CONCEPT]) == {"integrals": ["math"], CONCEPT: ["text"]}
  assert len(llm.calls) == 1


def test_contrast_concepts_keep_only_meanings_the_filter_finds_unrelated():
  meaning = lambda word: templates.T_WORD_POLYSEMANTIC_MEANING.format(WORD=word, CONCEPT=CONCEPT)
  verdict = lambda m: templates.T_FILTER_CONTRAST_CONCEPT.format(CONTRAST_CONCEPT=m, CONCEPT=CONCEPT)
  llm = Scripted({
      templates.T_CONCEPT_TO_WORDS.format(CONCEPT=CONCEPT): "lease\nhire\nrent\n",
      meaning("lease"): "a new lease of life: renewed energy", meaning("hire"): "<NONE>",
      meaning("rent"): "a tear in fabric",
      verdict("a new lease of life: renewed energy"): "Both involve time periods.\nAnswer: <NO>",
      verdict("a tear in fabric"): "Unrelated.\nAnswer: <YES>",
  })
  assert contrast_concepts(llm.writer(), [CONCEPT]) == {CONCEPT: [("rent", "a tear in fabric")]}
  assert [len(c) for c in llm.calls] == [1, 3, 2]  # words, meanings of 3 words, filter of the 2 with a meaning


def test_a_writer_returning_the_wrong_number_of_replies_is_named():
  with pytest.raises(AxjaxError, match="the LLM short returned 0 replies for 1 prompts"):
    concept_genres(Writer("short", lambda prompts: []), [CONCEPT])
