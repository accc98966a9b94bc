"""Next-token cross-entropy that never materialises [N, V] logits: the vocabulary is scanned in chunks.

A 262k-token vocabulary makes full logits 1 MB per token in float32; with this loss only [N, chunk] logits
exist at a time, and the backward pass recomputes each chunk (jax.checkpoint) instead of storing it.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from axjax.model.config import GemmaConfig
from axjax.model.layers import RMSNorm


def token_nll(params, config: GemmaConfig, h: jax.Array, targets: jax.Array, chunk: int = 16_384) -> jax.Array:
  """-log p(target) per row for residual-stream rows h [N, d] (before the final norm) and targets [N].

  Equals `-log_softmax(unembed(h))[target]`, including Gemma 2's final soft-cap, in float32.
  """
  chex.assert_rank(h, 2)
  chex.assert_shape(targets, (h.shape[0],))
  x = RMSNorm(config.rms_norm_eps).apply({"params": params["final_norm"]}, h)
  table = params["embed"]
  vocab = table.shape[0]
  n_chunks = -(-vocab // chunk)
  padded = jnp.pad(table, ((0, n_chunks * chunk - vocab), (0, 0))).reshape(n_chunks, chunk, -1)
  cap = config.final_logit_softcap

  def capped(logits):
    logits = logits.astype(jnp.float32)
    return jnp.tanh(logits / cap) * cap if cap else logits

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk_lse(carry, xs):
    rows, index = xs
    logits = capped(x @ rows.T)
    valid = index * chunk + jnp.arange(chunk) < vocab
    logits = jnp.where(valid[None], logits, -jnp.inf)
    return jnp.logaddexp(carry, jax.nn.logsumexp(logits, axis=-1)), None

  init = jnp.full((h.shape[0],), -jnp.inf, jnp.float32)
  lse, _ = jax.lax.scan(chunk_lse, init, (padded, jnp.arange(n_chunks)))
  target_logit = capped(jnp.einsum("nd,nd->n", x, jnp.take(table, targets, axis=0)))
  return lse - target_logit
