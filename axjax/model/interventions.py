"""Interventions on the residual stream: pure functions `(params, h, context) -> h` applied after one layer.

Parameters may carry a leading batch axis so that every row of a batch has its own intervention (steering
evaluation runs thousands of (concept, factor, prompt) rows this way).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from axjax.errors import AxjaxError

Array = jax.Array
PyTree = Any


class InterventionContext(NamedTuple):
  """What an intervention may look at besides h: where it is allowed to act and the token positions."""

  mask: Array  # [B, T] bool: positions the intervention acts on
  positions: Array  # [B, T] int32


@dataclasses.dataclass(frozen=True)
class Intervention:
  """A pure function applied to the residual stream after decoder layer `layer` (static under jit)."""

  layer: int
  apply: Callable[[PyTree, Array, InterventionContext], Array]
  name: str = ""


def _add_vector(params: PyTree, h: Array, ctx: InterventionContext) -> Array:
  vector, factor = params["vector"], params["factor"]  # [B, d] or [d]; [B] or []
  chex.assert_rank(factor, {0, 1})
  delta = jnp.asarray(factor, jnp.float32)[..., None] * vector.astype(jnp.float32)  # [B, d] or [d]
  delta = delta[..., None, :] if delta.ndim == 2 else delta  # broadcast over time
  return jnp.where(ctx.mask[..., None], h.astype(jnp.float32) + delta, h).astype(h.dtype)


def steering(layer: int) -> Intervention:
  """AxBench's addition intervention `h + factor * vector` (the factor already includes any max_act scale).

  Params: {"vector": [B, d] or [d], "factor": [B] or scalar}.
  """
  return Intervention(layer=layer, apply=_add_vector, name="addition")


def _clamp_vector(params: PyTree, h: Array, ctx: InterventionContext) -> Array:
  vector, factor = params["vector"], params["factor"]
  chex.assert_rank(factor, {0, 1})
  v = vector.astype(jnp.float32)
  v = v[..., None, :] if v.ndim == 2 else v  # [B, 1, d] or [d]
  hf = h.astype(jnp.float32)
  latent = jax.nn.relu(jnp.sum(hf * v, axis=-1, keepdims=True))  # [B, T, 1]
  target = jnp.asarray(factor, jnp.float32)[..., None, None] if vector.ndim == 2 else factor
  return jnp.where(ctx.mask[..., None], hf - latent * v + target * v, h).astype(h.dtype)


def clamping(layer: int) -> Intervention:
  """AxBench's clamping: the positive part of h along v is replaced by `factor * v` (v of unit norm).

  Params as for `steering`.
  """
  return Intervention(layer=layer, apply=_clamp_vector, name="clamping")


def steering_params(vector: Array, factor: Array | float) -> dict[str, Array]:
  """Params for `steering` and `clamping`, checked for shape."""
  vector = jnp.asarray(vector)
  factor = jnp.asarray(factor, jnp.float32)
  chex.assert_rank(vector, {1, 2})
  if vector.ndim == 2:
    chex.assert_shape(factor, (vector.shape[0],))
  return {"vector": vector, "factor": factor}


def check_width(params: PyTree, hidden_size: int) -> None:
  """Refuses intervention params whose last axis is not the model width (where they have one)."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    shape = getattr(leaf, "shape", ())
    if len(shape) >= 1 and path and getattr(path[-1], "key", None) == "vector" and shape[-1] != hidden_size:
      raise AxjaxError(f"intervention vector has width {shape[-1]} but the model's hidden size is {hidden_size}")
