"""The openai judge against a real local HTTP server: ratings, retries, cache, concurrency and check() sentences."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from axjax.errors import AxjaxError
from axjax.judges.base import RatingRequest
from axjax.judges.openai_judge import OpenAIJudge
from axjax.judges.reply_cache import ReplyCache
from axjax.judges.rubrics import parse_rating, prompts
from axjax.llm.openai_client import OpenAIClient, OpenAIConfig
from openai_stub_server import COMPLETION_TOKENS, Faults, StubServer, stub_prompt_tokens, stub_rating

KEY_ENV = "AXJAX_TEST_JUDGE_KEY"


@pytest.fixture(autouse=True)
def _environment(monkeypatch):
  monkeypatch.setenv(KEY_ENV, "test-key")
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def judge(url: str, tmp_path, **options) -> OpenAIJudge:
  """A judge with tiny timeouts and backoff so failures cost milliseconds."""
  config = dict(model="stub-judge", base_url=url, cache_path=str(tmp_path / "replies.sqlite"), api_key_env=KEY_ENV,
                timeout_s=2.0, backoff_s=0.001, max_backoff_s=0.01)
  return OpenAIJudge(OpenAIConfig(**{**config, **options}))


def requests(n: int, tag: str = "") -> list[RatingRequest]:
  return [RatingRequest(f"concept {i}", f"instruction {i}", f"generation {i}{tag}") for i in range(n)]


def expected(batch: list[RatingRequest]) -> np.ndarray:
  return np.array([[stub_rating(p) for p in prompts(r)] for r in batch], np.int8)


@pytest.mark.parametrize("reply, rating", [
    ("The concept is clear.\nRating: [[2]]", 2),
    ("Rating: [[0]]", 0),
    ("  Rating:  [[ 1 ]]  \n", 1),
    ("**Rating:** [[2]]", 2),
    ("**Rating: [[1]]**", 1),
    ("Rating: **[[0]]**", 0),
    ("I first thought Rating: [[1]] but in the end\nRating: [[2]]", 2),
    ("Rating: [[2]]\nRating: [[3]]", None),
    ("Rating: [[3]]", None),
    ("Rating: [[-1]]", None),
    ("Rating: 2", None),
    ("Rating: [2]", None),
    ("Rating: [[1.5]]", None),
    ("Rating: [[2.0]]", None),
    ("Rating: [[two]]", None),
    ("rating: [[2]]", None),
    ("Score: [[2]]", None),
    ("", None),
])
def test_parse_rating(reply, rating):
  assert parse_rating(reply) == rating


def test_prompts_hold_their_fields_only():
  concept, instruction, fluency = prompts(RatingRequest("golden retrievers", "Explain tides.", "Dogs {swim} well."))
  assert "golden retrievers" in concept and "Explain tides." not in concept
  assert "Explain tides." in instruction and "golden retrievers" not in instruction
  assert "golden retrievers" not in fluency and "Explain tides." not in fluency
  for prompt in (concept, instruction, fluency):
    assert "Dogs {swim} well." in prompt and "`Rating: [[N]]`" in prompt


def test_ratings_match_the_server(tmp_path):
  batch = requests(4)
  with StubServer() as server:
    rater = judge(server.url, tmp_path)
    ratings = rater.rate(batch)
  assert ratings.dtype == np.int8 and ratings.shape == (4, 3)
  np.testing.assert_array_equal(ratings, expected(batch))
  assert len(set(expected(batch).ravel())) == 3  # the hash really spreads ratings over 0, 1, 2
  all_prompts = [p for r in batch for p in prompts(r)]
  assert rater.usage() == dict(calls=12, cached=0, malformed=0,
                               prompt_tokens=sum(stub_prompt_tokens(p) for p in all_prompts),
                               completion_tokens=12 * COMPLETION_TOKENS)
  sent = server.chat_requests()
  assert sorted(r.body["messages"][0]["content"] for r in sent) == sorted(all_prompts)
  assert {r.authorization for r in sent} == {"Bearer test-key"}
  assert sent[0].body["model"] == "stub-judge" and sent[0].body["messages"][0]["role"] == "user"
  assert (sent[0].body["temperature"], sent[0].body["max_tokens"], sent[0].body["seed"]) == (1.0, 256, 0)
  assert rater.name == "openai:stub-judge" and rater.is_proxy is False


def test_duplicates_are_asked_once_and_progress_counts_up(tmp_path):
  batch = requests(2)
  seen = []
  with StubServer() as server:
    rater = judge(server.url, tmp_path)
    ratings = rater.rate([batch[0], batch[0], batch[1]], lambda done, total: seen.append((done, total)))
  assert len(server.chat_requests()) == 6 and rater.usage()["calls"] == 6
  np.testing.assert_array_equal(ratings, expected([batch[0], batch[0], batch[1]]))
  assert seen == [(i, 6) for i in range(7)]


@pytest.mark.parametrize("failure", ["500", "429", "sleep", "invalid_json", "not_completion", "drop"])
def test_retries_recover(tmp_path, failure):
  batch = requests(1)
  with StubServer(Faults(failure=failure, first=2, sleep_s=0.6)) as server:
    rater = judge(server.url, tmp_path, timeout_s=0.2)
    ratings = rater.rate(batch)
  np.testing.assert_array_equal(ratings, expected(batch))
  assert [r.failure for r in server.chat_requests()].count(failure) == 2
  assert len(server.chat_requests()) == 5
  assert rater.usage() == dict(calls=5, cached=0, malformed=0, prompt_tokens=sum(map(stub_prompt_tokens,
                               prompts(batch[0]))), completion_tokens=3 * COMPLETION_TOKENS)


def test_retry_after_is_honoured(tmp_path):
  with StubServer(Faults(failure="429", first=1, retry_after="1")) as server:
    rater = judge(server.url, tmp_path, max_backoff_s=5.0)
    start = time.monotonic()
    rater.rate(requests(1))
    elapsed = time.monotonic() - start
  assert 1.0 <= elapsed < 3.0
  assert rater.usage()["calls"] == 4


def test_replies_without_a_rating_score_zero_and_are_cached(tmp_path):
  batch = requests(1)
  with StubServer(Faults(failure="no_rating", first=2)) as server:
    rater = judge(server.url, tmp_path)
    ratings = rater.rate(batch)
    unrated = {r.body["messages"][0]["content"] for r in server.chat_requests() if r.failure}
  assert len(unrated) == 2
  want = np.array([[0 if p in unrated else stub_rating(p) for p in prompts(batch[0])]], np.int8)
  np.testing.assert_array_equal(ratings, want)
  assert rater.usage()["calls"] == 3 and rater.usage()["malformed"] == 2
  with StubServer() as server:
    again = judge(server.url, tmp_path)
    np.testing.assert_array_equal(again.rate(batch), want)
    assert server.requests == []
  assert again.usage() == dict(calls=0, cached=3, malformed=2, prompt_tokens=0, completion_tokens=0)


def test_rerun_with_the_same_cache_sends_nothing(tmp_path):
  batch = requests(5)
  with StubServer() as server:
    first = judge(server.url, tmp_path).rate(batch)
    second_judge = judge(server.url, tmp_path)
    second = second_judge.rate(batch)
    assert len(server.chat_requests()) == 15
    other_model = judge(server.url, tmp_path, model="another-judge")
    other_model.rate(batch)
  np.testing.assert_array_equal(second, first)
  assert second_judge.usage() == dict(calls=0, cached=15, malformed=0, prompt_tokens=0, completion_tokens=0)
  assert other_model.usage()["calls"] == 15 and other_model.usage()["cached"] == 0  # keyed by model too


def test_exhausted_retries_raise_and_keep_the_other_replies(tmp_path):
  batch = requests(2) + requests(1, tag=" POISON")
  with StubServer(Faults(failure="500", marker="POISON")) as server:
    rater = judge(server.url, tmp_path, max_retries=2)
    with pytest.raises(AxjaxError) as error:
      rater.rate(batch)
  assert str(error.value) == f"the judge at {server.url} failed 3 times on one request (last: HTTP 500)"
  assert len(ReplyCache(str(tmp_path / "replies.sqlite"))) == 6
  with StubServer() as server:
    rerun = judge(server.url, tmp_path)
    np.testing.assert_array_equal(rerun.rate(batch), expected(batch))
  assert rerun.usage()["calls"] == 3 and rerun.usage()["cached"] == 6


def test_client_errors_are_not_retried(tmp_path):
  with StubServer(Faults(failure="400", first=100)) as server:
    rater = judge(server.url, tmp_path, concurrency=1)
    with pytest.raises(AxjaxError) as error:
      rater.rate(requests(1))
  assert str(error.value) == (f"the judge server at {server.url} answered HTTP 400 to {server.url}/chat/completions: "
                              "The model `stub-judge` does not exist")
  assert len(server.chat_requests()) == 1


def test_concurrency_never_exceeds_the_pool(tmp_path):
  with StubServer(Faults(delay_s=0.2)) as server:
    rater = judge(server.url, tmp_path, concurrency=4)
    rater.rate(requests(10))
  assert server.max_in_flight == 4
  assert rater.usage()["calls"] == 30


def test_check_passes_on_a_live_server_even_without_models(tmp_path):
  for status in (200, 404):
    with StubServer(Faults(models_status=status)) as server:
      judge(server.url, tmp_path).check()
    sent = [(r.method, r.path, r.authorization) for r in server.requests]
    assert sent == [("GET", "/v1/models", "Bearer test-key")]


def test_check_on_a_closed_port(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/v1"
  with pytest.raises(AxjaxError) as error:
    judge(url, tmp_path).check()
  assert str(error.value) == f"the judge server at {url} refuses connections"


def assert_both_refuse(rater: OpenAIJudge, sentence: str) -> None:
  """check() and rate() both fail with exactly `sentence`."""
  for attempt in (rater.check, lambda: rater.rate(requests(1))):
    with pytest.raises(AxjaxError) as error:
      attempt()
    assert str(error.value) == sentence


@pytest.mark.parametrize("value", [None, "", "  "])
def test_missing_key(tmp_path, monkeypatch, value):
  if value is None:
    monkeypatch.delenv(KEY_ENV)
  else:
    monkeypatch.setenv(KEY_ENV, value)
  sentence = (f"the openai judge needs an API key in ${KEY_ENV}; local servers that ignore keys accept any value, "
              f"e.g. {KEY_ENV}=none")
  with StubServer() as server:
    assert_both_refuse(judge(server.url, tmp_path), sentence)
    assert server.requests == []


def test_rejected_key(tmp_path):
  with StubServer(Faults(api_key="the-right-key")) as server:
    rater = judge(server.url, tmp_path, concurrency=1)
    assert_both_refuse(rater, f"the judge server at {server.url} rejects the API key in ${KEY_ENV} (HTTP 401)")
    assert len(server.chat_requests()) == 1


def test_bad_configuration_and_cache_file(tmp_path):
  with pytest.raises(AxjaxError, match="must start with http:// or https://"):
    judge("localhost:8000/v1", tmp_path)
  garbage = tmp_path / "garbage.sqlite"
  garbage.write_bytes(b"this is not an sqlite file, just text that is long enough to have a header" * 4)
  with pytest.raises(AxjaxError, match="is not a usable sqlite database"):
    judge("http://127.0.0.1:1/v1", tmp_path, cache_path=str(garbage))


def test_a_priced_model_reports_its_cost_and_an_llm_client_names_itself(tmp_path):
  """usage()'s cost_usd is the new replies' tokens at AxBench's gpt-4o-mini prices ($0.15 / $0.60 per million);
  the data generator's client says "LLM" where the judge says "judge"."""
  batch = requests(2)
  with StubServer() as server:
    rater = judge(server.url, tmp_path, model="gpt-4o-mini")
    rater.rate(batch)
    usage = rater.usage()
    assert usage["prompt_tokens"] == sum(stub_prompt_tokens(p) for r in batch for p in prompts(r))
    assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 0.15 + 6 * COMPLETION_TOKENS * 0.60) / 1e6)
  client = OpenAIClient(OpenAIConfig(model="m", base_url=server.url, cache_path=str(tmp_path / "c.sqlite"),
                                     api_key_env=KEY_ENV, timeout_s=0.5), role="LLM")
  with pytest.raises(AxjaxError, match=f"^the LLM server at {server.url} refuses connections$"):
    client.check()  # the server has stopped


def test_a_later_draw_is_asked_with_its_own_seed_and_cached_apart(tmp_path):
  with StubServer(reply=lambda prompt, body: f"{prompt} / seed {body['seed']}") as server:
    client = judge(server.url, tmp_path, seed=5)
    assert client.complete(["a", "b"]) == ["a / seed 5", "b / seed 5"]
    assert client.complete(["a"], draw=2) == ["a / seed 7"]
    assert client.complete(["a"]) == ["a / seed 5"] and client.complete(["a"], draw=2) == ["a / seed 7"]
    assert [r.body["seed"] for r in server.chat_requests()] == [5, 5, 7]  # the repeats come from the cache
