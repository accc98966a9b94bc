"""RePS's own responses: greedy (equal to argmax decoding without a KV cache), cached per model and length, reused without generating, and resumed from a partial cache."""

import numpy as np
import pytest

import axjax
from axjax.errors import AxjaxError
from axjax.generation.text import encode_prompts, stop_token_ids
from axjax.methods import own_responses as own

INSTRUCTIONS = ["Name a fruit.", "Write a haiku about rain.", "What is 2 + 2?", "Name a fruit.", "Say hello."]


@pytest.fixture(scope="module")
def model(tiny_with_tokenizer):
  return axjax.load(tiny_with_tokenizer)


def test_responses_are_greedy_cached_and_resumed(model, tmp_path, monkeypatch):
  path = str(tmp_path / "cache.parquet")
  calls = []
  real = own.generate_text
  monkeypatch.setattr(own, "generate_text", lambda m, batch, **kw: calls.append(list(batch)) or real(m, batch, **kw))
  first = own.own_responses(model, INSTRUCTIONS[:2], max_new_tokens=4, batch_size=2, path=path)
  assert calls == [INSTRUCTIONS[:2]]
  got = own.own_responses(model, INSTRUCTIONS, max_new_tokens=4, batch_size=2, path=path)
  assert calls[1:] == [[INSTRUCTIONS[2], INSTRUCTIONS[4]]]  # only the missing ones, once each
  assert got[:2] == first and got[3] == got[0]
  tok = model.tokenizer
  stops = set(stop_token_ids(tok))
  for instruction, response in zip(INSTRUCTIONS, got):  # greedy decoding without a KV cache, token by token
    ids = list(encode_prompts(tok, [instruction], True)[0])
    generated = []
    for _ in range(4):
      x = np.array([ids])
      nxt = int(np.asarray(axjax.forward(model.params, model.config, x, np.ones_like(x, bool)).logits)[0, -1].argmax())
      if nxt in stops:
        break
      generated.append(nxt)
      ids.append(nxt)
    assert response == tok.decode(generated, skip_special_tokens=True), instruction
  calls.clear()
  assert own.own_responses(model, INSTRUCTIONS[::-1], max_new_tokens=4, path=path) == got[::-1]
  assert calls == []
  assert own.cache_path(model, 512, "/x").endswith("-512.parquet")


def test_a_damaged_cache_is_refused_in_one_sentence(model, tmp_path):
  path = tmp_path / "cache.parquet"
  path.write_bytes(b"not parquet")
  with pytest.raises(AxjaxError, match="the response cache .* is not readable .*: delete it to regenerate"):
    own.own_responses(model, INSTRUCTIONS, max_new_tokens=4, path=str(path))
