"""The prompting baselines: AxBench's steering-prompt templates, writers (a real local OpenAI-compatible server
and a local model), the steered chat inputs, and PromptDetection's rubric prompts, parser and generation."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

import axjax
from axjax.data.axbench_format import AxbenchData, Concept
from axjax.errors import AxjaxError
from axjax.generation.sampling import SamplingConfig
from axjax.generation.text import generate_text
from axjax.judges import rubrics
from axjax.judges.openai_judge import OpenAIJudge
from axjax.llm.openai_client import OpenAIConfig
from axjax.methods import prompting
from axjax.methods.prompting import (FALLBACK, T_GENERATE_STEERING_PROMPT, T_PROMPT_STEERING, Writer, local_writer,
                                     openai_writer, parse_detection_rating, prompt_detection_scores, rate_outputs,
                                     steered_inputs, steering_prompts)
from openai_stub_server import StubServer, stub_rating

KEY_ENV = "AXJAX_TEST_WRITER_KEY"
CONCEPTS = ["golden retrievers", "rain in Seattle"]


@pytest.fixture(autouse=True)
def _environment(monkeypatch):
  monkeypatch.setenv(KEY_ENV, "test-key")
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def tiny(tiny_with_tokenizer):
  return axjax.load(tiny_with_tokenizer)


def test_templates_are_axbenchs_text():
  """sha256 of the strings in stanfordnlp/axbench axbench/utils/dataset.py at e9b8cd4, so no edit slips in."""
  digest = lambda s: hashlib.sha256(s.encode()).hexdigest()
  assert digest(T_PROMPT_STEERING) == "aa66a3b9266c78a44329cedc979306d03ca07ec04e4dbde85a0a67f470de77f6"
  assert digest(T_GENERATE_STEERING_PROMPT) == "f9be1860a2cb6b107fc097a12f75d9a365b6dae23a88040eedcc5d5e511c5762"


def test_openai_writer_prompts_and_steered_chat_inputs(tiny, tmp_path):
  with StubServer() as server:
    config = OpenAIConfig(model="stub-writer", base_url=server.url, cache_path=str(tmp_path / "replies.sqlite"),
                               api_key_env=KEY_ENV, timeout_s=2.0, backoff_s=0.001)
    writer = openai_writer(OpenAIJudge(config))
    written = steering_prompts(CONCEPTS, writer)
    asked = [r.body["messages"][0]["content"] for r in server.chat_requests()]
    assert steering_prompts(CONCEPTS, writer) == written  # the second time every reply comes from the cache
    assert len(server.chat_requests()) == 2
  requests = [T_GENERATE_STEERING_PROMPT % c for c in CONCEPTS]
  assert sorted(asked) == sorted(requests)
  assert requests[0].startswith("Generate a prompt to guide a language model in producing responses. \n")
  assert "include content related to golden retrievers (the concept) in its responses." in requests[0]
  replies = [f"The fragment was read carefully.\nRating: [[{stub_rating(r)}]]" for r in requests]  # the stub's script
  assert written == [(replies[0], "openai:stub-writer"), (replies[1], "openai:stub-writer")]
  inputs = steered_inputs(tiny.tokenizer, [p for p, _ in written], ["What is 2+2?", "Name a colour."])
  turn = "<start_of_turn>user\n{}\n\nQuestion: {}<end_of_turn>\n<start_of_turn>model\n"
  assert inputs == [turn.format(replies[0], "What is 2+2?"), turn.format(replies[1], "Name a colour.")]


def test_offline_fallback_is_labelled_and_can_be_refused(tiny):
  assert steering_prompts(CONCEPTS, None) == [
      ("You must answer the question with content related to golden retrievers even if it is not related to the "
       "question or it does not make sense.", FALLBACK),
      ("You must answer the question with content related to rain in Seattle even if it is not related to the "
       "question or it does not make sense.", FALLBACK)]
  with pytest.raises(AxjaxError, match=r"has no writer: pass one .* or allow_fallback=True"):
    steering_prompts(CONCEPTS, None, allow_fallback=False)
  [(fallback, _)] = steering_prompts(["cats"], None)
  assert steered_inputs(tiny.tokenizer, [fallback], ["Say hi."]) == [
      f"<start_of_turn>user\n{fallback}\n\nQuestion: Say hi.<end_of_turn>\n<start_of_turn>model\n"]


def test_empty_reply_falls_back_for_that_concept_only():
  writer = Writer("fake", lambda prompts: [" \n ", "  Always mention rain.\n"][:len(prompts)])
  assert steering_prompts(CONCEPTS, writer) == [(T_PROMPT_STEERING % CONCEPTS[0], FALLBACK),
                                                ("Always mention rain.", "fake")]
  with pytest.raises(AxjaxError, match="returned 2 replies for 3 prompts"):
    steering_prompts(CONCEPTS + ["cats"], writer)
  with pytest.raises(AxjaxError, match="non-empty description for every concept"):
    steering_prompts(["cats", "  "], writer)


def test_local_writer_returns_the_models_greedy_replies(tiny):
  writer = local_writer(tiny, max_new_tokens=4, temperature=0.0, batch_size=2)
  replies = generate_text(tiny, [T_GENERATE_STEERING_PROMPT % c for c in CONCEPTS],
                          sampling=SamplingConfig(4, 0.0), chat=True, batch_size=2)
  want = [(r.strip(), f"local:{tiny.name}") if r.strip() else (T_PROMPT_STEERING % c, FALLBACK)
          for c, r in zip(CONCEPTS, replies)]
  assert steering_prompts(CONCEPTS, writer) == want


@pytest.mark.parametrize("reply, rating", [
    ("The concept is clear.\nRating: [[2]]", 2.0),
    ("Rating: 1", 1.0),
    ("nonsense", -1.0),
    ("**Rating:** [[1.5]]", 1.5),
    ('Rating: "0"\nbecause nothing matches', 0.0),
    ("Rating: [[1]] then Rating: [[0]]", 0.0),
    ("Rating: [[3]]", -1.0),
    ("Rating: [[-1]]", -1.0),
    ("Rating: nan", -1.0),
    ("Rating: [[two]]", -1.0),
    ("Rating:", -1.0),
    ("rating: [[2]]", -1.0),
])
def test_parse_detection_rating(reply, rating):
  assert parse_detection_rating(reply) == rating


def test_prompt_detection_rates_each_row_for_its_own_concept(tiny, monkeypatch):
  concepts = (Concept(3, "cats", "text"), Concept(7, "rain", "text"))
  rows = pd.DataFrame({"input": ["Say hi.", "News?", "Weather?"],
                       "output": ["A cat sat.", "Stocks fell.", "It poured."],
                       "output_concept": ["cats", "cats", "rain"], "category": ["positive", "negative", "positive"],
                       "concept_id": [3, 3, 7]})
  data = AxbenchData("tiny-eval", concepts, pd.DataFrame(), rows)
  calls = []

  def recorded(model, prompts, **options):
    replies = generate_text(model, prompts, **options)
    calls.append((list(prompts), options, replies))
    return replies

  monkeypatch.setattr(prompting, "generate_text", recorded)
  seen = []
  scores = prompt_detection_scores(tiny, data, max_new_tokens=4, temperature=0.0, batch_size=2,
                                   progress=lambda done, total: seen.append((done, total)))
  assert seen == [(2, 3), (3, 3)]  # after each batch
  again = prompt_detection_scores(tiny, data, max_new_tokens=4, temperature=0.0, batch_size=4)
  (prompts, options, replies), (prompts_again, _, replies_again) = calls
  assert prompts == [rubrics.CONCEPT.format(concept=c, generation=o)
                     for c, o in [("cats", "A cat sat."), ("cats", "Stocks fell."), ("rain", "It poured.")]]
  assert "<concept>\nrain\n</concept>" in prompts[2] and "<fragment>\nIt poured.\n</fragment>" in prompts[2]
  assert options["chat"] and options["sampling"] == SamplingConfig(4, 0.0)
  assert scores.shape == (3,) and scores.dtype == np.float32
  np.testing.assert_array_equal(scores, [parse_detection_rating(r) for r in replies])
  assert prompts_again == prompts and replies_again == replies  # greedy: the same replies in any batch size
  np.testing.assert_array_equal(again, scores)


def test_bad_detection_input_fails_with_one_sentence(tiny):
  with pytest.raises(AxjaxError, match="has no inference/latent_eval_data.parquet"):
    prompt_detection_scores(tiny, AxbenchData("no-eval", (), pd.DataFrame(), None))
  with pytest.raises(AxjaxError, match="one concept per output, got 1 concepts for 2 outputs"):
    rate_outputs(tiny, ["cats"], ["a", "b"])
  with pytest.raises(AxjaxError, match="max_new_tokens >= 1"):
    rate_outputs(tiny, ["cats"], ["a"], max_new_tokens=0)
  with pytest.raises(AxjaxError, match="one steering prompt per instruction"):
    steered_inputs(tiny.tokenizer, ["p"], [])
