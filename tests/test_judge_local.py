"""The local judge: rubric prompts through axjax's own generation, cached replies, and refusing a base model."""

import numpy as np
import pytest

import axjax
from axjax.errors import AxjaxError
from axjax.judges.base import RatingRequest
from axjax.judges.local_judge import LocalJudge
from axjax.judges.rubrics import parse_rating, prompts


@pytest.fixture(scope="module")
def tiny(tiny_with_tokenizer):
  return axjax.load(tiny_with_tokenizer)


def test_ratings_are_the_parsed_greedy_replies_and_are_cached(tiny, tmp_path, monkeypatch):
  judge = LocalJudge(tiny, str(tmp_path / "replies.sqlite"), batch_size=4, max_new_tokens=4)
  batch = [RatingRequest("cats", "Name an animal.", "A cat."), RatingRequest("rain", "Say hi.", "Hello.")]
  replies = {}
  import axjax.judges.local_judge as local

  def fake_generate(model, texts, **kw):  # what a rating model would answer, one reply per prompt
    assert model is tiny and kw["chat"] and kw["sampling"].temperature == 0.0
    out = [f"Because. Rating: [[{len(t) % 3}]]" if "fluen" not in t else "no rating here" for t in texts]
    replies.update(zip(texts, out))
    return out

  monkeypatch.setattr(local, "generate_text", fake_generate)
  ratings = judge.rate(batch)
  want = np.array([[parse_rating(replies[p]) or 0 for p in prompts(r)] for r in batch], np.int8)
  np.testing.assert_array_equal(ratings, want)
  assert ratings.dtype == np.int8 and (ratings[:, 2] == 0).all()  # unparseable fluency replies rate 0
  assert judge.usage() == {"generated": 6, "cached": 0, "malformed": 2}
  monkeypatch.setattr(local, "generate_text", lambda *a, **k: pytest.fail("a cached prompt was generated again"))
  again = LocalJudge(tiny, str(tmp_path / "replies.sqlite"))
  np.testing.assert_array_equal(again.rate(batch), ratings)
  assert again.usage()["cached"] == 6


def test_real_generation_path_runs(tiny, tmp_path):
  judge = LocalJudge(tiny, str(tmp_path / "r.sqlite"), batch_size=2, max_new_tokens=3)
  ratings = judge.rate([RatingRequest("cats", "Name an animal.", "A cat.")])
  assert ratings.shape == (1, 3) and set(ratings.ravel()) <= {0, 1, 2}


def test_base_model_without_its_own_chat_template_is_refused(tiny, tmp_path):
  with pytest.raises(AxjaxError, match="the local judge needs an instruction-tuned model shipping a chat template"):
    LocalJudge(tiny, str(tmp_path / "r.sqlite")).check()
