"""An intervention after layer L leaves layers <= L untouched and gets finite, nonzero gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from conftest import padded_batch

LAYER = 3


@pytest.fixture(scope="module")
def tiny(tiny_gemma3):
  return axjax.load(tiny_gemma3[1])


def run(lm, ids, mask, vec, factor=2.0):
  return axjax.forward(lm.params, lm.config, ids, mask, intervention=axjax.steering(LAYER),
                       intervention_params=axjax.steering_params(vec, factor), collect_hidden=True)


def test_layers_up_to_L_unchanged_layers_above_changed(tiny):
  ids, mask = padded_batch(np.random.default_rng(0), 128, lengths=[10, 6], width=10)
  vec = np.ones(tiny.config.hidden_size, np.float32)
  plain = axjax.forward(tiny.params, tiny.config, ids, mask, collect_hidden=True)
  steered = run(tiny, ids, mask, vec)
  np.testing.assert_array_equal(np.asarray(steered.all_hidden[:LAYER + 1]), np.asarray(plain.all_hidden[:LAYER + 1]))
  for layer in range(LAYER + 1, tiny.config.num_layers):
    assert not np.allclose(np.asarray(steered.all_hidden[layer])[mask], np.asarray(plain.all_hidden[layer])[mask])


def test_intervention_acts_only_on_masked_positions(tiny):
  ids, mask = padded_batch(np.random.default_rng(1), 128, lengths=[8], width=8)
  where = np.zeros_like(mask)
  where[:, 5:] = True
  vec = np.ones(tiny.config.hidden_size, np.float32)
  out = axjax.forward(tiny.params, tiny.config, ids, mask, intervention=axjax.steering(LAYER),
                      intervention_params=axjax.steering_params(vec, 3.0), intervention_mask=where)
  plain = axjax.forward(tiny.params, tiny.config, ids, mask)
  diff = np.abs(np.asarray(out.logits) - np.asarray(plain.logits)).max(axis=-1)[0]
  assert (diff[:5] == 0).all() and (diff[5:] > 0).all()  # causal: earlier positions cannot see it


def test_gradients_reach_the_vector_but_not_the_frozen_prefix(tiny):
  ids, mask = padded_batch(np.random.default_rng(2), 128, lengths=[9, 9], width=9)
  positions = jnp.full((2, 1), 8)

  def loss(vector, params):
    out = axjax.forward(params, tiny.config, ids, mask, intervention=axjax.steering(LAYER),
                        intervention_params={"vector": vector, "factor": jnp.float32(1.5)},
                        logit_positions=positions)
    return jax.nn.logsumexp(out.logits, axis=-1).sum() - out.logits[..., 7].sum()

  vec = jnp.full((tiny.config.hidden_size,), 0.1)
  g_vec, g_params = jax.grad(loss, argnums=(0, 1))(vec, tiny.params)
  assert np.isfinite(np.asarray(g_vec)).all() and np.abs(np.asarray(g_vec)).max() > 0
  below = jax.tree.map(lambda a: np.abs(np.asarray(a[:LAYER + 1])).max(), g_params["layers"])
  above = jax.tree.map(lambda a: np.abs(np.asarray(a[LAYER + 1:])).max(), g_params["layers"])
  assert max(jax.tree.leaves(below)) == 0.0
  assert max(jax.tree.leaves(above)) > 0.0


def test_logit_positions_select_the_same_logits(tiny):
  ids, mask = padded_batch(np.random.default_rng(3), 128, lengths=[7, 4], width=7)
  full = np.asarray(axjax.forward(tiny.params, tiny.config, ids, mask).logits)
  pos = np.array([[6, 2], [6, 5]])
  some = np.asarray(axjax.forward(tiny.params, tiny.config, ids, mask, logit_positions=pos).logits)
  np.testing.assert_allclose(some, np.take_along_axis(full, pos[..., None], axis=1), atol=1e-6)


def test_stop_after_layer_returns_that_layers_output(tiny):
  ids, mask = padded_batch(np.random.default_rng(4), 128, lengths=[6], width=6)
  full = axjax.forward(tiny.params, tiny.config, ids, mask, collect_hidden=True)
  early = axjax.forward(tiny.params, tiny.config, ids, mask, stop_after_layer=LAYER)
  assert early.logits is None
  np.testing.assert_allclose(np.asarray(early.hidden), np.asarray(full.all_hidden[LAYER]), atol=1e-6)


def test_clamping_matches_numpy_per_row():
  rng = np.random.default_rng(5)
  h = rng.normal(size=(2, 4, 6)).astype(np.float32)
  v = rng.normal(size=(2, 6)).astype(np.float32)
  v /= np.linalg.norm(v, axis=-1, keepdims=True)
  factor = np.asarray([1.5, -0.5], np.float32)
  mask = np.asarray([[0, 1, 1, 1], [1, 1, 0, 1]], bool)
  ctx = axjax.InterventionContext(jnp.asarray(mask), jnp.zeros((2, 4), jnp.int32))
  got = np.asarray(axjax.clamping(0).apply(axjax.steering_params(v, factor), jnp.asarray(h), ctx))
  latent = np.maximum(np.einsum("btd,bd->bt", h, v), 0)[..., None]
  want = h - latent * v[:, None] + factor[:, None, None] * v[:, None]
  want = np.where(mask[..., None], want, h)
  np.testing.assert_allclose(got, want, atol=1e-6)
  proj = np.einsum("btd,bd->bt", got, v)
  np.testing.assert_allclose(proj[mask], np.broadcast_to(factor[:, None], (2, 4))[mask]
                             + np.minimum(np.einsum("btd,bd->bt", h, v), 0)[mask], atol=1e-5)
