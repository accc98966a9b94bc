"""Multi-site interventions and LoRA: the split scan composes like nested single-site runs, starts from cached
activations, keeps gradients out of the frozen prefix, and cached generation equals full forwards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.errors import AxjaxError
from axjax.generation.decode import generate_tokens
from axjax.generation.sampling import SamplingConfig
from axjax.model.adapters import Lora, first_last_mask, init_loreft_params, init_lora_params, loreft
from axjax.model.transformer import Edits, Segment, run_above, unembed
from conftest import padded_batch

GREEDY = SamplingConfig(max_new_tokens=5, temperature=0.0)


@pytest.fixture(scope="module")
def tiny(tiny_gemma3):
  return axjax.load(tiny_gemma3[1])


def vectors(config, rows, seed, scale=3.0):
  return np.random.default_rng(seed).normal(size=(rows, config.hidden_size)).astype(np.float32) * scale


def lora_params(config, lora, seed, rows=None):
  """Random non-zero adapters (B is zero at peft's initialisation), per row if `rows` is given."""
  keys = jax.random.split(jax.random.key(seed), rows or 1)
  one = lambda k: {**init_lora_params(config, lora, k), "b": jax.random.normal(
      jax.random.fold_in(k, 1), (len(lora.layers), 4, config.hidden_size)) * 0.3}
  return jax.vmap(one)(keys) if rows else one(keys[0])


def test_segments_split_at_sites_and_around_lora_layers():
  edits = Edits((axjax.steering(2), axjax.steering(4)), Lora((3, 4, 6)))
  assert edits.segments(-1, 7) == (Segment(0, 3, None, 0), Segment(3, 5, (0, 2), 1), Segment(5, 6, None, None),
                                   Segment(6, 7, (2, 3), None))
  assert edits.segments(2, 7)[0] == Segment(3, 3, None, 0)  # a site at the starting layer edits the input
  assert edits.segments(-1, 3) == (Segment(0, 3, None, 0),)  # stop after layer 2: edits above do nothing


def test_two_sites_compose_like_nested_single_site_runs(tiny):
  ids, mask = padded_batch(np.random.default_rng(0), 128, lengths=[9, 5], width=9)
  c = tiny.config
  p2 = axjax.steering_params(vectors(c, 2, 1), [2.0, -1.0])
  p4 = axjax.steering_params(vectors(c, 2, 2), [1.5, 3.0])
  both = axjax.forward(tiny.params, c, ids, mask, intervention=(axjax.steering(2), axjax.steering(4)),
                       intervention_params=(p2, p4)).logits
  # nested: the single site at 2 up to layer 4, then the site at 4 on top of that stream
  h4 = axjax.forward(tiny.params, c, ids, mask, intervention=axjax.steering(2), intervention_params=p2,
                     stop_after_layer=4).hidden
  nested = unembed(tiny.params, c, run_above(tiny.params, c, h4, mask, 4, intervention=axjax.steering(4),
                                             intervention_params=p4))
  np.testing.assert_allclose(np.asarray(both)[mask], np.asarray(nested)[mask], atol=1e-4)
  # from the frozen model's cached stream after layer 2, both sites
  h2 = axjax.forward(tiny.params, c, ids, mask, stop_after_layer=2).hidden
  cached = unembed(tiny.params, c, run_above(tiny.params, c, h2, mask, 2, intervention=(axjax.steering(2),
                                                                                        axjax.steering(4)),
                                             intervention_params=(p2, p4)))
  np.testing.assert_allclose(np.asarray(both)[mask], np.asarray(cached)[mask], atol=1e-4)
  # a second site with factor 0 is the single site; a one-site tuple is the site itself
  zero = axjax.steering_params(vectors(c, 2, 2), [0.0, 0.0])
  single = axjax.forward(tiny.params, c, ids, mask, intervention=axjax.steering(2), intervention_params=p2).logits
  for sites, params in (((axjax.steering(2), axjax.steering(4)), (p2, zero)), ((axjax.steering(2),), (p2,))):
    got = axjax.forward(tiny.params, c, ids, mask, intervention=sites, intervention_params=params).logits
    np.testing.assert_array_equal(np.asarray(got), np.asarray(single))


def test_no_gradient_reaches_below_the_first_edit(tiny):
  ids, mask = padded_batch(np.random.default_rng(3), 128, lengths=[8, 8], width=8)
  c = tiny.config
  lora = Lora((3, 5), dropout=0.05)
  lp = lora_params(c, lora, 4)
  sites = (axjax.steering(4), axjax.steering(5))
  sp = tuple(axjax.steering_params(vectors(c, 1, 5 + i)[0], 1.0) for i in range(2))

  def loss(params, edits):
    logits = axjax.forward(params, c, ids, mask, lora_rng=jax.random.key(0), **edits).logits
    return jnp.sum(jax.nn.log_softmax(logits[:, -1]) * jnp.arange(128.0))

  for first, edits in ((4, dict(intervention=sites, intervention_params=sp)),
                       (2, dict(intervention=sites, intervention_params=sp, lora=lora, lora_params=lp))):
    grads = jax.grad(loss)(tiny.params, edits)["layers"]
    below = max(jax.tree.leaves(jax.tree.map(lambda a: np.abs(np.asarray(a[:first + 1])).max(), grads)))
    above = [max(jax.tree.leaves(jax.tree.map(lambda a: np.abs(np.asarray(a[i])).max(), grads)))
             for i in range(first + 1, c.num_layers)]
    assert below == 0.0 and min(above) > 0.0, first
  h = axjax.forward(tiny.params, c, ids, mask, stop_after_layer=2).hidden  # cached stream: no gradient either
  g = jax.grad(lambda h: jnp.sum(run_above(tiny.params, c, h, mask, 2, lora=lora, lora_params=lp)))(h)
  assert np.abs(np.asarray(g)).max() == 0.0


def greedy_by_full_forward(lm, ids, mask, steps, where=None, **edits):
  """Reference decoder: the whole sequence re-run for every new token. `where` [B, T]: the prompt positions the
  interventions act on (generated tokens not at all); None: every token."""
  out = []
  for _ in range(steps):
    logits = axjax.forward(lm.params, lm.config, ids, mask, intervention_mask=where, **edits).logits
    nxt = np.asarray(jnp.argmax(logits[:, -1], axis=-1)).astype(np.int32)
    out.append(nxt)
    ids = np.concatenate([ids, nxt[:, None]], axis=1)
    mask = np.concatenate([mask, np.ones((len(ids), 1), bool)], axis=1)
    where = None if where is None else np.concatenate([where, np.zeros((len(ids), 1), bool)], axis=1)
  return np.stack(out, axis=1)


def test_cached_generation_with_sites_and_per_row_lora_equals_full_forward(tiny):
  ids, mask = padded_batch(np.random.default_rng(6), 128, lengths=[9, 6], width=9)
  c = tiny.config
  key = jax.random.key(0)
  sites = (axjax.steering(1), axjax.steering(5))
  sp = tuple(axjax.steering_params(vectors(c, 2, 7 + i), [2.0, -2.0]) for i in range(2))
  got = generate_tokens(tiny.params, c, ids, mask, key, GREEDY, intervention=sites, intervention_params=sp)
  np.testing.assert_array_equal(np.asarray(got.tokens), greedy_by_full_forward(
      tiny, ids, mask, GREEDY.max_new_tokens, intervention=sites, intervention_params=sp))

  lora = Lora((2, 3, 6))  # two consecutive layers share a segment
  lp = lora_params(c, lora, 9, rows=2)
  got = generate_tokens(tiny.params, c, ids, mask, key, GREEDY, lora=lora, lora_params=lp)
  want = greedy_by_full_forward(tiny, ids, mask, GREEDY.max_new_tokens, lora=lora, lora_params=lp)
  np.testing.assert_array_equal(np.asarray(got.tokens), want)
  plain = np.asarray(generate_tokens(tiny.params, c, ids, mask, key, GREEDY).tokens)
  assert (want != plain).any()


def test_cached_generation_with_loreft_at_prompt_positions_equals_full_forward(tiny):
  ids, mask = padded_batch(np.random.default_rng(10), 128, lengths=[11, 7], width=11)
  c = tiny.config
  where = np.asarray(first_last_mask(jnp.asarray(mask), 2, 2))
  sites = tuple(map(loreft, (2, 4)))
  keys = jax.random.split(jax.random.key(11), 4)
  per_row = lambda k: jax.vmap(lambda kk: init_loreft_params(c, kk))(jax.random.split(k, 2))
  sp = tuple({**per_row(keys[i]), "weight": per_row(keys[i + 2])["weight"] * 30.0} for i in range(2))
  got = generate_tokens(tiny.params, c, ids, mask, jax.random.key(0), GREEDY, intervention=sites,
                        intervention_params=sp, prompt_intervention_mask=where, intervene_generated=False)
  want = greedy_by_full_forward(tiny, ids, mask, GREEDY.max_new_tokens, where, intervention=sites,
                                intervention_params=sp)
  np.testing.assert_array_equal(np.asarray(got.tokens), want)
  plain = np.asarray(generate_tokens(tiny.params, c, ids, mask, jax.random.key(0), GREEDY).tokens)
  assert (want != plain).any()


def test_bad_edits_fail_with_one_sentence(tiny):
  c = tiny.config
  ids = np.zeros((2, 4), np.int32)
  mask = np.ones((2, 4), bool)
  v = axjax.steering_params(np.zeros(64, np.float32), 1.0)
  run = lambda **kw: axjax.forward(tiny.params, c, ids, **kw)
  with pytest.raises(AxjaxError, match=r"layer 9 is out of range: this model has layers 0\.\.6"):
    run(intervention=(axjax.steering(2), axjax.steering(9)), intervention_params=(v, v))
  with pytest.raises(AxjaxError, match=r"sites must be at distinct layers in increasing order; got layers \[4, 2\]"):
    run(intervention=(axjax.steering(4), axjax.steering(2)), intervention_params=(v, v))
  with pytest.raises(AxjaxError, match=r"2 intervention sites need a tuple of 2 parameter sets, one per site; got 1"):
    run(intervention=(axjax.steering(2), axjax.steering(4)), intervention_params=(v,))
  bad_loreft = {**init_loreft_params(c, jax.random.key(0)), "rotation": jnp.zeros((4, 32))}
  with pytest.raises(AxjaxError, match=r"intervention rotation has width 32 but the model's hidden size is 64"):
    run(intervention=loreft(2), intervention_params=bad_loreft)
  lora = Lora((1, 3))
  good = init_lora_params(c, lora, jax.random.key(0))
  with pytest.raises(AxjaxError, match=r"layer 7 is out of range"):
    run(lora=Lora((1, 7)), lora_params=good)
  with pytest.raises(AxjaxError, match=r"LoRA layers must be distinct and in increasing order; got \[3, 1\]"):
    run(lora=Lora((3, 1)), lora_params=good)
  with pytest.raises(AxjaxError, match=r"a needs \[\(B,\) 2, 64, r\] and b \[\(B,\) 2, r, 64\]"):
    run(lora=lora, lora_params={**good, "b": jnp.zeros((2, 4, 48))})
  with pytest.raises(AxjaxError, match=r"LoRA params carry adapters for 3 rows but the batch has 2 rows"):
    run(lora=lora, lora_params=jax.tree.map(lambda a: jnp.stack([a] * 3), good))
  h = np.zeros((2, 4, 64), np.float32)
  with pytest.raises(AxjaxError, match=r"an intervention site at layer 2 lies below layer 3, where the run starts"):
    run_above(tiny.params, c, h, mask, 3, intervention=axjax.steering(2), intervention_params=v)
  with pytest.raises(AxjaxError, match=r"LoRA layer 3 lies at or below layer 3, where the run starts"):
    run_above(tiny.params, c, h, mask, 3, lora=Lora((3, 5)), lora_params=good)
