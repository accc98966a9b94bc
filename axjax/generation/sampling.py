"""Choosing the next token from logits: greedy, temperature, nucleus (top-p)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick tokens; static under jit. temperature 0 means greedy."""

  max_new_tokens: int = 128
  temperature: float = 1.0
  top_p: float = 1.0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


def sample_next(logits: jax.Array, keys: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """Next token per row from float32 logits [B, V], row i drawn with its own key keys[i].

  Per-row keys make a row's sample independent of which other rows share its batch.
  """
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_p < 1:
    # Keep the smallest set of tokens whose probability reaches top_p (always at least the best token).
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    cutoff_index = jnp.sum(mass_before < sampling.top_p, axis=-1) - 1
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index[:, None], axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.vmap(_inverse_cdf)(keys, logits)


_BLOCK = 512  # vocabulary entries per block of the two-level inverse CDF


def _inverse_cdf(key: jax.Array, logits: jax.Array) -> jax.Array:
  """One draw from softmax(logits) [V] with one uniform number: find the block, then the entry, whose cumulative
  mass passes it. On CPU this is >10x faster than jax.random.categorical's Gumbel noise over 262k entries."""
  mass = jnp.exp(logits - jnp.max(logits))  # -inf (masked) entries get exactly 0 and are never chosen
  blocks = jnp.pad(mass, (0, -mass.shape[0] % _BLOCK)).reshape(-1, _BLOCK)
  block_mass = jnp.sum(blocks, axis=-1)
  cumulative = jnp.cumsum(block_mass)
  u = jax.random.uniform(key, (), jnp.float32) * cumulative[-1]
  block = jnp.minimum(jnp.sum(cumulative <= u), blocks.shape[0] - 1)
  within = jnp.cumsum(blocks[block])
  entry = jnp.minimum(jnp.sum(within <= u - (cumulative[block] - block_mass[block])), _BLOCK - 1)
  return jnp.minimum(block * _BLOCK + entry, mass.shape[0] - 1).astype(jnp.int32)
