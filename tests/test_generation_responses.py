"""The generator's LLM responses against a scripted LLM and the embedded model's tokenizer: each reply stripped as
AxBench strips it and cut to the token budget (checked by re-tokenising), empty replies marked None."""

import pytest

from axjax.data_generation import responses, templates
from axjax.loading.load import embedded_gguf_path
from axjax.loading.tokenizer import gguf_tokenizer
from axjax.methods.prompting import Writer

CONCEPT = "references to rental services"
LONG = " ".join(f"word{i}" for i in range(200))


@pytest.fixture(scope="module")
def tokenizer():
  return gguf_tokenizer(embedded_gguf_path())


def scripted(table):
  return Writer("scripted", lambda prompts: [table[p] for p in prompts])


def test_concept_responses_are_stripped_and_cut_to_the_token_budget(tokenizer):
  asks = ["Is it safe to invest?", "Name a colour.", "Say nothing."]
  table = {templates.T_RESPONSE_WITH_CONCEPT.format(INSTRUCTION=asks[0], CONCEPT=CONCEPT): f' "{LONG}" ',
           templates.T_RESPONSE_WITH_CONCEPT.format(INSTRUCTION=asks[1], CONCEPT=CONCEPT): "'Rent a red car.'",
           templates.T_RESPONSE_WITH_CONCEPT.format(INSTRUCTION=asks[2], CONCEPT=CONCEPT): "  ''  "}
  long, short, empty = responses.with_concept(scripted(table), tokenizer, CONCEPT, asks, 16)
  assert len(tokenizer.tokenize(long)) <= 16 and LONG.startswith(long) and len(long) > 20
  assert short == "Rent a red car." and empty is None


def test_contrast_and_plain_negatives(tokenizer):
  ask = "Describe your weekend."
  contrast = ("rent", "a tear in fabric")
  table = {templates.T_RESPONSE_WITH_CONTRAST_CONCEPT.format(INSTRUCTION=ask, CONCEPT=CONCEPT, WORD="rent",
                                                             CONTRAST_CONCEPT="a tear in fabric"):
           "<response> <final> My jacket had a rent in it.",
           templates.T_RESPONSE_WITHOUT_CONCEPT.format(INSTRUCTION=ask, CONCEPT=CONCEPT): "I read a book."}
  assert responses.with_contrast(scripted(table), tokenizer, CONCEPT, [contrast], [ask], 64) == [
      "My jacket had a rent in it"]  # leading tags and the final period go, as AxBench's strip(" .'")
  assert responses.without_concept(scripted(table), tokenizer, CONCEPT, [ask], 64) == ["I read a book."]


def test_retries_ask_again_only_for_what_stayed_unusable():
  asked = []

  def respond(items, draw):
    asked.append((list(items), draw))
    return [None if item == "bad" or (item == "flaky" and draw == 0) else f"{item}@{draw}" for item in items]

  assert responses.with_retries(respond, ["ok", "flaky", "bad"], 2) == ["ok@0", "flaky@1", None]
  assert asked == [(["ok", "flaky", "bad"], 0), (["flaky", "bad"], 1), (["bad"], 2)]
  assert responses.with_retries(respond, ["bad"], 0) == [None]
