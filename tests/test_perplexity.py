"""Continuation perplexity equals a PyTorch transformers computation, whatever the batching and bucketing."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import axjax
from axjax.errors import AxjaxError
from axjax.evaluation.perplexity import continuation_perplexity, text_perplexity

# (prompt length, continuation length): longer than the sliding window, single tokens, an empty continuation
LENGTHS = [(5, 9), (1, 1), (12, 3), (3, 20), (7, 0), (2, 14), (9, 1)]


def rows(seed=0, lengths=LENGTHS):
  rng = np.random.default_rng(seed)
  return ([rng.integers(0, 128, p).tolist() for p, _ in lengths],
          [rng.integers(0, 128, c).tolist() for _, c in lengths])


def torch_perplexity(hf_model, prompt, continuation):
  if not continuation:
    return np.nan
  ids = torch.tensor([prompt + continuation])
  with torch.no_grad():
    logp = torch.log_softmax(hf_model(ids).logits[0].double(), dim=-1)
  n = len(prompt)
  nll = -logp[n - 1:-1].gather(1, ids[0, n:, None])[:, 0]
  return float(torch.exp(nll.mean()))


def test_matches_pytorch_with_batch_padding(tiny_checkpoint):
  hf_model, folder = tiny_checkpoint
  lm = axjax.load(folder)
  prompts, conts = rows()
  got = continuation_perplexity(lm, prompts, conts, batch_size=4, length_bucket=8)  # 7 rows: 2 batches, 1 pad
  want = np.array([torch_perplexity(hf_model, p, c) for p, c in zip(prompts, conts)])
  assert got.dtype == np.float64 and got.shape == (len(LENGTHS),)
  assert np.isnan(got[4]) and np.isnan(want[4])
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_batching_and_bucketing_do_not_change_values(tiny_gemma3):
  lm = axjax.load(tiny_gemma3[1])
  prompts, conts = rows(seed=1)
  base = continuation_perplexity(lm, prompts, conts, batch_size=16, length_bucket=32)
  np.testing.assert_allclose(continuation_perplexity(lm, prompts, conts, batch_size=3, length_bucket=5), base,
                             rtol=1e-5)
  single = [continuation_perplexity(lm, [p], [c], batch_size=1)[0] for p, c in zip(prompts, conts)]
  np.testing.assert_allclose(single, base, rtol=1e-5)


def test_empty_and_bad_input(tiny_gemma3):
  lm = axjax.load(tiny_gemma3[1])
  assert np.isnan(continuation_perplexity(lm, [[1, 2]], [[]])).all()
  assert continuation_perplexity(lm, [], []).shape == (0,)
  with pytest.raises(AxjaxError, match="at least one token"):
    continuation_perplexity(lm, [[]], [[3]])
  with pytest.raises(AxjaxError, match="token ids"):
    continuation_perplexity(lm, [[1]], [[500]])
  with pytest.raises(AxjaxError, match="2 prompts but 1"):
    continuation_perplexity(lm, [[1], [2]], [[3]])


def test_text_perplexity_encodes_like_generation(tiny_with_tokenizer):
  lm = axjax.load(tiny_with_tokenizer)
  prompts, conts = ["Tell me about cats.", "Hi"], ["Cats are small animals.", ""]
  got = text_perplexity(lm, prompts, conts)
  prompt_ids = [lm.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False) for p in prompts]
  cont_ids = [lm.tokenizer(c, add_special_tokens=False).input_ids for c in conts]
  assert cont_ids[0][0] != lm.tokenizer.bos_token_id
  np.testing.assert_array_equal(got, continuation_perplexity(lm, prompt_ids, cont_ids))
  assert np.isfinite(got[0]) and np.isnan(got[1])
