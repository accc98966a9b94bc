"""KV-cache generation equals re-running the full forward; per-row interventions change only their rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.generation.decode import generate_tokens
from axjax.generation.sampling import SamplingConfig, sample_next
from axjax.generation.text import encode_prompts, generate_text, left_pad
from conftest import padded_batch

GREEDY = SamplingConfig(max_new_tokens=14, temperature=0.0)


def greedy_by_full_forward(lm, ids, mask, steps, intervention=None, iparams=None):
  """Reference decoder: no cache, the whole sequence re-run for every new token."""
  ids, mask = np.asarray(ids), np.asarray(mask)
  out = []
  for _ in range(steps):
    logits = axjax.forward(lm.params, lm.config, ids, mask, intervention=intervention,
                           intervention_params=iparams).logits
    nxt = np.asarray(jnp.argmax(logits[:, -1], axis=-1)).astype(np.int32)
    out.append(nxt)
    ids = np.concatenate([ids, nxt[:, None]], axis=1)
    mask = np.concatenate([mask, np.ones((len(ids), 1), bool)], axis=1)
  return np.stack(out, axis=1)


@pytest.fixture(scope="module")
def tiny(tiny_gemma3):
  return axjax.load(tiny_gemma3[1])


def test_cached_greedy_equals_full_forward_past_the_window(tiny):
  # prompts of 13, 6 and 2 tokens plus 14 new tokens: longer than the sliding window of 8
  ids, mask = padded_batch(np.random.default_rng(1), 128, lengths=[13, 6, 2], width=13)
  got = generate_tokens(tiny.params, tiny.config, ids, mask, jax.random.key(0), GREEDY)
  want = greedy_by_full_forward(tiny, ids, mask, GREEDY.max_new_tokens)
  np.testing.assert_array_equal(np.asarray(got.tokens), want)
  np.testing.assert_array_equal(np.asarray(got.lengths), [GREEDY.max_new_tokens] * 3)


def test_cached_greedy_with_intervention_equals_full_forward(tiny):
  ids, mask = padded_batch(np.random.default_rng(2), 128, lengths=[9, 4], width=9)
  iv = axjax.steering(layer=2)
  vec = np.random.default_rng(3).normal(size=(2, tiny.config.hidden_size)).astype(np.float32)
  p = axjax.steering_params(vec, [3.0, -2.0])
  got = generate_tokens(tiny.params, tiny.config, ids, mask, jax.random.key(0), GREEDY, intervention=iv,
                        intervention_params=p)
  np.testing.assert_array_equal(np.asarray(got.tokens), greedy_by_full_forward(tiny, ids, mask, 14, iv, p))


def test_zero_intervention_changes_nothing_and_rows_are_independent(tiny):
  ids, mask = padded_batch(np.random.default_rng(4), 128, lengths=[7, 7, 3], width=7)
  key = jax.random.key(5)
  plain = np.asarray(generate_tokens(tiny.params, tiny.config, ids, mask, key, GREEDY).tokens)
  vec = np.random.default_rng(6).normal(size=(3, tiny.config.hidden_size)).astype(np.float32) * 4
  steer = lambda factors: np.asarray(generate_tokens(
      tiny.params, tiny.config, ids, mask, key, GREEDY, intervention=axjax.steering(3),
      intervention_params=axjax.steering_params(vec, factors)).tokens)
  np.testing.assert_array_equal(steer([0.0, 0.0, 0.0]), plain)
  steered = steer([0.0, 5.0, 0.0])
  np.testing.assert_array_equal(steered[[0, 2]], plain[[0, 2]])
  assert (steered[1] != plain[1]).any()


def test_sampled_rows_depend_only_on_their_own_key(tiny):
  ids, mask = padded_batch(np.random.default_rng(8), 128, lengths=[7, 5, 3], width=7)
  keys = jax.random.split(jax.random.key(9), 3)
  sampling = SamplingConfig(max_new_tokens=10, temperature=1.0)
  together = np.asarray(generate_tokens(tiny.params, tiny.config, ids, mask, keys, sampling).tokens)
  alone = np.asarray(generate_tokens(tiny.params, tiny.config, ids[1:2], mask[1:2], keys[1:2], sampling).tokens)
  np.testing.assert_array_equal(alone[0], together[1])
  other = np.asarray(generate_tokens(tiny.params, tiny.config, ids, mask, keys[::-1], sampling).tokens)
  assert (other != together).any()  # the keys matter


def test_prompt_intervention_mask_limits_where_the_prompt_is_steered(tiny):
  ids, mask = padded_batch(np.random.default_rng(10), 128, lengths=[6, 6], width=6)
  vec = np.random.default_rng(11).normal(size=(2, tiny.config.hidden_size)).astype(np.float32) * 4
  run = lambda pmask: np.asarray(generate_tokens(
      tiny.params, tiny.config, ids, mask, jax.random.key(0), SamplingConfig(max_new_tokens=1, temperature=0.0),
      intervention=axjax.steering(2), intervention_params=axjax.steering_params(vec, [3.0, 3.0]),
      prompt_intervention_mask=pmask).tokens)
  want = greedy_by_full_forward(tiny, ids, mask, 1, axjax.steering(2), axjax.steering_params(vec, [3.0, 3.0]))
  np.testing.assert_array_equal(run(None), want)
  unsteered_prompt = run(np.zeros_like(mask))
  np.testing.assert_array_equal(unsteered_prompt, greedy_by_full_forward(tiny, ids, mask, 1))  # 1st token: prompt only


def test_stop_tokens_end_rows_and_pad_after(tiny):
  ids, mask = padded_batch(np.random.default_rng(7), 128, lengths=[5, 5], width=5)
  plain = np.asarray(generate_tokens(tiny.params, tiny.config, ids, mask, jax.random.key(0), GREEDY).tokens)
  stop = int(plain[0, 3])
  out = generate_tokens(tiny.params, tiny.config, ids, mask, jax.random.key(0), GREEDY, stop_ids=(stop,),
                        pad_id=127)
  first = int(np.argmax(plain[0] == stop))
  assert int(out.lengths[0]) == first
  assert (np.asarray(out.tokens)[0, first + 1:] == 127).all()


def test_sampling_rules():
  logits = jnp.asarray([[0.0, 3.0, 1.0, 2.9]] * 64)
  keys = jax.random.split(jax.random.key(0), (2, 64))
  nucleus = sample_next(logits, keys[0], SamplingConfig(8, temperature=1.0, top_p=0.05))
  assert (np.asarray(nucleus) == 1).all()  # the top token alone carries more than 5%
  broad = np.asarray(sample_next(logits, keys[1], SamplingConfig(8, temperature=1.0)))
  assert len(set(broad.tolist())) > 2
  again = np.asarray(sample_next(logits, keys[1], SamplingConfig(8, temperature=1.0)))
  np.testing.assert_array_equal(broad, again)  # same key, same tokens
  alone = np.asarray(sample_next(logits[5:6], keys[1][5:6], SamplingConfig(8, temperature=1.0)))
  assert alone[0] == broad[5]  # a row's token depends on its own key only


def test_sampling_follows_the_softmax_over_a_multi_block_vocabulary():
  probs = np.zeros(1500)  # three blocks of the inverse CDF, the last one partial
  probs[[3, 700, 1499, 1024]] = [0.1, 0.2, 0.3, 0.4]
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(4000, axis=0)
  draws = np.asarray(sample_next(logits, jax.random.split(jax.random.key(3), 4000), SamplingConfig(8)))
  assert set(draws.tolist()) == {3, 700, 1024, 1499}  # zero-probability entries are never drawn
  freq = np.bincount(draws, minlength=1500)[[3, 700, 1499, 1024]] / 4000
  np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.03)  # ~4 standard errors


def test_real_model_cached_greedy_equals_full_forward(embedded):
  rows = encode_prompts(embedded.tokenizer, ["The capital of France is", "Water boils at a temperature of",
                                             "In 1492,"], chat=False)
  ids, mask = left_pad(rows, embedded.tokenizer.pad_token_id, bucket=8)
  got = generate_tokens(embedded.params, embedded.config, ids, mask, jax.random.key(0),
                        SamplingConfig(max_new_tokens=6, temperature=0.0))
  np.testing.assert_array_equal(np.asarray(got.tokens), greedy_by_full_forward(embedded, ids, mask, 6))


def test_generate_text_reads_like_english(embedded):
  days, numbers = generate_text(embedded, ["Monday, Tuesday, Wednesday,", "One, two, three, four,"],
                                chat=False, batch_size=2, sampling=SamplingConfig(max_new_tokens=8, temperature=0.0))
  assert days.startswith(" Thursday, Friday") and numbers.startswith(" five, six")
