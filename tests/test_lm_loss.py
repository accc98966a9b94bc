"""Chunked cross-entropy equals log-softmax of full logits, value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np

import axjax
from axjax.model.lm_loss import token_nll
from axjax.model.transformer import unembed


def test_chunked_nll_equals_full_log_softmax():
  config = axjax.PRESETS["gemma-2-2b"].replace(vocab_size=1000, hidden_size=32, num_layers=2,
                                               sliding_layers=(True, False))
  params = axjax.init_params(config, jax.random.key(0))
  params["final_norm"]["scale"] = jax.random.normal(jax.random.key(1), (32,)) * 0.3
  h = jax.random.normal(jax.random.key(2), (5, 32)) * 30.0  # large enough that the soft-cap matters
  targets = jnp.array([0, 3, 999, 500, 17])

  def full(h):
    logp = jax.nn.log_softmax(unembed(params, config, h), axis=-1)
    return -jnp.take_along_axis(logp, targets[:, None], axis=1)[:, 0]

  chunked = lambda h: token_nll(params, config, h, targets, chunk=128)  # 1000 is not a multiple of 128
  np.testing.assert_allclose(chunked(h), full(h), rtol=1e-5, atol=1e-5)
  g_full = jax.grad(lambda h: full(h).sum())(h)
  g_chunk = jax.grad(lambda h: chunked(h).sum())(h)
  np.testing.assert_allclose(g_chunk, g_full, rtol=1e-4, atol=1e-6)
