"""Concept-detection scores: every eval example against every concept's direction in one matmul.

AxBench scores each eval row with its own concept's direction at every token from the chat prefix on,
rounds each token score to 3 decimals and keeps the maximum as the example's score. Rounding is monotone, so
the rounded maximum equals the maximum of the rounded scores: we keep the raw maximum here, and
`detection_metrics.round_scores` applies AxBench's rounding to it.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("relu",))
def token_scores(acts: jax.Array, weights: jax.Array, biases: jax.Array, relu: bool) -> jax.Array:
  """Scores [N, T, C] of activations [N, T, d] against directions [C, d]: ReLU(h . w) or h . w + b."""
  chex.assert_rank([acts, weights], [3, 2])
  scores = jnp.einsum("ntd,cd->ntc", acts, weights, precision=jax.lax.Precision.HIGHEST)
  return jax.nn.relu(scores) if relu else scores + biases


def example_max_scores(acts: np.ndarray, score_mask: np.ndarray, weights: np.ndarray, biases: np.ndarray,
                       relu: bool, chunk: int = 64) -> np.ndarray:
  """Per example and concept, the max over scored tokens of the token score: [N, C] float32."""
  out = np.empty((acts.shape[0], weights.shape[0]), np.float32)
  w, b = jnp.asarray(weights, jnp.float32), jnp.asarray(biases, jnp.float32)
  for start in range(0, acts.shape[0], chunk):
    scores = np.asarray(token_scores(jnp.asarray(acts[start:start + chunk]), w, b, relu))
    scores = np.where(score_mask[start:start + chunk, :, None], scores, -np.inf)
    out[start:start + chunk] = scores.max(axis=1)
  return out
