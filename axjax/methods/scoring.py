"""Concept-detection scores: one pass over the eval texts scores every concept of every dictionary.

AxBench scores each eval row with its own concept's direction at every token from the chat prefix on,
rounds each token score to 3 decimals and keeps the maximum as the example's score. Rounding is monotone, so
the rounded maximum equals the maximum of the rounded scores: we keep the raw maximum here, and
`detection_metrics.round_scores` applies AxBench's rounding to it. The layer-L states of a batch go from the
forward pass straight into a [T, d] x [d, C] matmul on the device; only the [rows, C] maxima come back, so
memory does not grow with the eval set.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax import processes
from axjax.methods.activations import WIDTH_MULTIPLE, placed_batches, residual_stream
from axjax.model.config import GemmaConfig


def token_scores(acts: jax.Array, weights: jax.Array, biases: jax.Array, relu: jax.Array,
                 floors: jax.Array) -> jax.Array:
  """Scores [N, T, C] of activations [N, T, d] against directions [C, d]: z = h . w + b, kept where relu [C] is
  unset; where it is set, z where z > floor [C] and 0 elsewhere (floor 0: ReLU(z) as ReFT-r1 and SSV, whose b is
  0; an SAE feature's threshold: GemmaScope's JumpReLU). Float32, full precision."""
  chex.assert_rank([acts, weights], [3, 2])
  chex.assert_shape([biases, relu, floors], (weights.shape[0],))
  scores = jnp.einsum("ntd,cd->ntc", acts.astype(jnp.float32), weights, precision=jax.lax.Precision.HIGHEST)
  scores = scores + biases
  return jnp.where(relu, jnp.where(scores > jnp.maximum(floors, 0.0), scores, 0.0), scores)


@functools.partial(jax.jit, static_argnums=(1, 5))
def _batch_max_scores(params, config: GemmaConfig, tokens, mask, score_mask, layer: int, weights, biases, relu,
                      floors):
  scores = token_scores(residual_stream(params, config, tokens, mask, layer), weights, biases, relu, floors)
  return jnp.where(score_mask[:, :, None], scores, -jnp.inf).max(axis=1)


def example_max_scores(params, config: GemmaConfig, tokens: np.ndarray, mask: np.ndarray, score_mask: np.ndarray,
                       layer: int, weights: np.ndarray, biases: np.ndarray, relu: np.ndarray,
                       floors: np.ndarray | None = None, *, batch_size: int = 16,
                       width_multiple: int = WIDTH_MULTIPLE, progress=None,
                       mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """Per example and concept, the max over scored tokens of the token score at `layer`: [N, C] float32.

  tokens/mask/score_mask [N, T]; weights [C, d]; biases, relu and floors [C] (`token_scores`; floors default
  0). Batches follow `activation_batches`;
  with a `mesh`, each batch's texts are split over its concept axis.
  """
  chex.assert_equal_shape([tokens, mask, score_mask])
  w, b = jnp.asarray(weights, jnp.float32), jnp.asarray(biases, jnp.float32)
  r = jnp.asarray(relu, bool)
  f = jnp.zeros(w.shape[0], jnp.float32) if floors is None else jnp.asarray(floors, jnp.float32)
  out = np.empty((tokens.shape[0], w.shape[0]), np.float32)
  for rows, placed in placed_batches([tokens, mask, score_mask], mask, batch_size, width_multiple, mesh, progress):
    out[rows] = processes.to_host(_batch_max_scores(params, config, *placed, layer, w, b, r, f))
  return out
