"""Concept directions computed from cached activations, no gradients: DiffMean, PCA, LAT and Random.

Every function returns unit-norm directions [C, d] for all concepts at once. Inputs describe each concept's
training tokens as gathered, padded arrays: acts [C, M, d] with a validity mask [C, M] and labels [C, M]
(1 = token of a positive example), so one compiled computation serves every concept.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_EPS = 1e-8  # as AxBench's set_decoder_norm_to_unit_norm


def unit_norm(w: Array) -> Array:
  """Rows scaled to unit L2 norm (AxBench divides by norm + eps)."""
  return w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + _EPS)


def _masked_mean(x: Array, weights: Array) -> Array:
  """Weighted mean over axis 1 of x [C, M, d] in full float32 precision (no TF32 on GPUs)."""
  total = jnp.einsum("cm,cmd->cd", weights, x, precision=jax.lax.Precision.HIGHEST)
  return total / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)


@jax.jit
def diffmean(acts: Array, valid: Array, labels: Array) -> Array:
  """Mean of positive-example tokens minus mean of negative-example tokens (token-weighted, as AxBench).

  Both means are taken around the mean of all valid tokens first: residual streams carry dimensions of
  ~1e5 shared by every token, whose float32 sums would otherwise swamp the difference.
  """
  chex.assert_rank(acts, 3)
  valid = valid.astype(jnp.float32)
  centred = acts - _masked_mean(acts, valid)[:, None, :]
  pos = valid * (labels == 1)
  neg = valid * (labels != 1)
  return unit_norm(_masked_mean(centred, pos) - _masked_mean(centred, neg))


def top_component(scatter: Array) -> Array:
  """The top eigenvector of a centred scatter matrix [d, d], signed as scikit-learn's PCA signs PC1.

  sklearn's `svd_flip` (v-based) makes each component's largest-magnitude entry positive.
  """
  _, vectors = jnp.linalg.eigh(scatter)
  pc = vectors[:, -1]
  return pc * jnp.sign(pc[jnp.argmax(jnp.abs(pc))])


def _first_component(x: Array, weights: Array) -> Array:
  """First principal component of the weighted rows of x [M, d] (`top_component` of their scatter)."""
  centred = (x - _masked_mean(x[None], weights[None])[0]) * weights[:, None]
  return top_component(jnp.einsum("md,me->de", centred, centred, precision=jax.lax.Precision.HIGHEST))


@jax.jit
def pca(acts: Array, valid: Array, labels: Array) -> Array:
  """PC1 of the tokens of positive examples (AxBench fits PCA(2) on positives only and keeps PC1)."""
  weights = valid.astype(jnp.float32) * (labels == 1)
  return unit_norm(jax.vmap(_first_component)(acts, weights))


def _pair_differences(x: Array, weights: Array, key: Array) -> tuple[Array, Array]:
  """Shuffle the valid rows, subtract the second half from the first, normalise: LAT's inputs."""
  m = x.shape[0]
  order = jnp.argsort(jnp.where(weights > 0, jax.random.uniform(key, (m,)), 2.0))  # valid rows first, shuffled
  n = jnp.sum(weights > 0)
  half = n // 2
  i = jnp.arange(m // 2)
  diffs = x[order[i]] - x[order[jnp.minimum(i + half, m - 1)]]
  norms = jnp.linalg.norm(diffs, axis=-1, keepdims=True)
  diffs = jnp.where(norms == 0, 0.0, diffs / jnp.where(norms == 0, 1.0, norms))
  return diffs, (i < half).astype(jnp.float32)


@jax.jit
def lat(acts: Array, valid: Array, labels: Array, keys: Array) -> Array:
  """LAT: PC1 of normalised differences of random pairs of positive-example tokens (keys [C]: one per concept)."""
  chex.assert_shape(keys, (acts.shape[0],))
  weights = valid.astype(jnp.float32) * (labels == 1)
  diffs, pair_weights = jax.vmap(_pair_differences)(acts, weights, keys)
  return unit_norm(jax.vmap(_first_component)(diffs, pair_weights))


def concept_keys(seed: int, concept_ids) -> Array:
  """One PRNG key per concept from (seed, concept id), so a concept's random numbers do not depend on which
  other concepts are trained beside it (chunked runs equal one run over all concepts)."""
  return jax.vmap(lambda c: jax.random.fold_in(jax.random.key(seed), c))(jnp.asarray(concept_ids, jnp.uint32))


def random_directions(concept_ids, hidden_size: int, seed: int) -> np.ndarray:
  """Random unit directions [C, d], one per concept id, reproducible for a seed (AxBench's Random baseline)."""
  w = jax.vmap(lambda k: jax.random.normal(k, (hidden_size,), jnp.float32))(concept_keys(seed, concept_ids))
  return np.asarray(unit_norm(w))
