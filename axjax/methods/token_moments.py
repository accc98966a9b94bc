"""DiffMean and PCA from token moments accumulated batch by batch during the activation pass: no activation
of any example is kept, so their memory does not grow with the examples (LAT's random token pairs need a
concept's positive tokens at once and stay with the cached activations).

Per concept: the count and sum of the scored tokens of its positive and of its negative examples, and for PCA
the scatter of its positive tokens. Sums are of x - shift, the shift being the mean of the first batch's scored
tokens: residual streams carry dimensions of ~1e5 shared by every token, which would swamp float32 sums. Each
batch's row sums and scatters are computed on the device (float32, full matmul precision) and accumulated on
the host in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax import processes
from axjax.methods import closed_form

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass
class TokenMoments:
  """Accumulated moments of C concepts' scored tokens: index 0 negatives, 1 positives."""

  count: np.ndarray  # [C, 2] float64 tokens
  total: np.ndarray  # [C, 2, d] float64 sums of x - shift
  scatter: np.ndarray  # [C, d, d] float64 sum over positive tokens of (x - shift)(x - shift)^T
  shift: np.ndarray | None = None  # [d] float32, set by the first batch


def membership(ex, rows: int) -> np.ndarray:
  """[C, 2, U] float64: how often each shared row is a negative (0) or positive (1) example of each concept."""
  out = np.zeros((len(ex.concept_ids), 2, rows))
  c, n = np.nonzero(ex.row_valid)
  np.add.at(out, (c, (ex.labels[c, n] == 1).astype(int), ex.index[c, n]), 1.0)
  return out


@jax.jit
def _batch_moments(acts, score, shift):
  """Per row [R]: scored tokens' count, sum [R, d] and scatter [R, d, d] of x - shift."""
  y = (acts.astype(jnp.float32) - shift) * score[..., None]
  sums = jnp.einsum("rt,rtd->rd", score, y, precision=_HIGHEST)
  return score.sum(-1), sums, jnp.einsum("rtd,rte->rde", y, y, precision=_HIGHEST)


def accumulate(batches: Iterable[tuple[np.ndarray, jax.Array, jax.Array]], members: np.ndarray,
               hidden_size: int) -> TokenMoments:
  """Moments from `batches` of (shared rows [R], activations [R, T, d], score mask [R, T]); rows may repeat
  within and across batches (a partial batch's filler copies): each row counts once. `members` from
  `membership`."""
  concepts = members.shape[0]
  m = TokenMoments(np.zeros((concepts, 2)), np.zeros((concepts, 2, hidden_size)),
                   np.zeros((concepts, hidden_size, hidden_size)))
  seen = np.zeros(members.shape[-1], bool)
  for rows, acts, score in batches:
    chex.assert_rank([acts, score], [3, 2])
    score = jnp.asarray(score, jnp.float32)
    if m.shift is None:
      first = jnp.einsum("rt,rtd->d", score, acts.astype(jnp.float32), precision=_HIGHEST)
      m.shift = processes.to_host(first / jnp.maximum(score.sum(), 1.0)).astype(np.float32)
    out = _batch_moments(acts, score, m.shift)
    out = [processes.to_host(a).astype(np.float64) for a in out]
    rows = np.asarray(rows)
    _, first_copy = np.unique(rows, return_index=True)
    fresh = first_copy[~seen[rows[first_copy]]]
    seen[rows[fresh]] = True
    weights = members[:, :, rows[fresh]]  # [C, 2, R']
    m.count += weights @ out[0][fresh]
    m.total += np.einsum("cpr,rd->cpd", weights, out[1][fresh])
    m.scatter += np.einsum("cr,rde->cde", weights[:, 1], out[2][fresh])
  return m


def diffmean(m: TokenMoments) -> np.ndarray:
  """[C, d] unit DiffMean directions: mean of positive-example tokens minus mean of negative-example tokens."""
  means = m.total / np.maximum(m.count, 1.0)[..., None]
  return np.asarray(closed_form.unit_norm(jnp.asarray(means[:, 1] - means[:, 0], jnp.float32)))


def pca(m: TokenMoments) -> np.ndarray:
  """[C, d] unit PC1 of each concept's positive-example tokens, signed as scikit-learn signs it."""
  n = np.maximum(m.count[:, 1], 1.0)[:, None, None]
  mean = m.total[:, 1][:, :, None] / n
  centred_scatter = m.scatter - n * mean * np.swapaxes(mean, 1, 2)
  return np.asarray(closed_form.unit_norm(jax.vmap(closed_form.top_component)(
      jnp.asarray(centred_scatter, jnp.float32))))
