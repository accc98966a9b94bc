"""Interventions on the residual stream: pure functions `(params, h, context) -> h` applied after one layer.

An `Intervention` is one site (a layer and its edit). A multi-site intervention is a tuple of sites at
increasing layers, with a tuple of parameters, one pytree per site (AxBench's LoReFT edits layers 5, 10, 15
and 20 of Gemma 2 2B). All sites act at the same positions.

Parameters may carry a leading batch axis so that every row of a batch has its own intervention (steering
evaluation runs thousands of (concept, factor, prompt) rows this way).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

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
  width_keys: tuple[str, ...] = ("vector",)  # params whose last axis is the model width (checked on input)


Sites = tuple[Intervention, ...]


def as_sites(intervention: Intervention | Sequence[Intervention] | None, params: Any) -> tuple[Sites, tuple]:
  """(sites, per-site params) as tuples: one `Intervention` takes its params as they are, a sequence of sites
  a sequence of params (one pytree per site)."""
  if intervention is None:
    return (), ()
  if isinstance(intervention, Intervention):
    return (intervention,), (params,)
  sites = tuple(intervention)
  layers = [site.layer for site in sites]
  if not sites or layers != sorted(set(layers)):
    raise AxjaxError(f"intervention sites must be at distinct layers in increasing order; got layers {layers}")
  if not isinstance(params, (tuple, list)) or len(params) != len(sites):
    got = len(params) if isinstance(params, (tuple, list)) else type(params).__name__
    raise AxjaxError(f"{len(sites)} intervention sites need a tuple of {len(sites)} parameter sets, one per "
                     f"site; got {got}")
  return sites, tuple(params)


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


def _preference_vector(params: PyTree, h: Array, ctx: InterventionContext) -> Array:
  vector, bias, factor = params["vector"], params["bias"], params["factor"]  # [(B,) d], [(B,)], [(B,)]
  chex.assert_rank([vector, bias, factor], [{1, 2}, {0, 1}, {0, 1}])
  per_row = lambda x: jnp.asarray(x, jnp.float32).reshape(-1, 1, 1) if jnp.ndim(x) == 1 else jnp.asarray(
      x, jnp.float32)  # [B] -> [B, 1, 1], against [B, T, 1]
  v = vector.astype(jnp.float32)
  v = v[:, None, :] if v.ndim == 2 else v  # [B, 1, d] or [d]
  hf = h.astype(jnp.float32)
  factor, bias = per_row(factor), per_row(bias)
  latent = jax.nn.relu(jnp.sum(hf * v, axis=-1, keepdims=True) + bias)  # [B, T, 1]
  null_out = -latent / jnp.sum(v * v, axis=-1, keepdims=True)
  coefficient = jnp.where(factor == 0.0, null_out, factor + bias)
  return jnp.where(ctx.mask[..., None], hf + coefficient * v, h).astype(h.dtype)


def preference_vector(layer: int) -> Intervention:
  """RePS's steering vector (upstream's PreferenceVectorIntervention): `h + (factor + b) v`, and for a zero
  factor the null-out `h - ReLU(h.v + b) / ||v||^2 v` (the suppression pair's intervention).

  Params: {"vector": [B, d] or [d], "bias": [B] or scalar, "factor": [B] or scalar} (one concept's vector
  with a factor per row, or a vector per row).
  """
  return Intervention(layer=layer, apply=_preference_vector, name="preference_vector")


def steering_params(vector: Array, factor: Array | float) -> dict[str, Array]:
  """Params for `steering` and `clamping`, checked for shape."""
  vector = jnp.asarray(vector)
  factor = jnp.asarray(factor, jnp.float32)
  chex.assert_rank(vector, {1, 2})
  if vector.ndim == 2:
    chex.assert_shape(factor, (vector.shape[0],))
  return {"vector": vector, "factor": factor}


def check_width(params: PyTree, hidden_size: int, keys: tuple[str, ...] = ("vector",)) -> None:
  """Refuses intervention params named in `keys` whose last axis is not the model width."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    shape = getattr(leaf, "shape", ())
    key = getattr(path[-1], "key", None) if path else None
    if len(shape) >= 1 and key in keys and shape[-1] != hidden_size:
      raise AxjaxError(f"intervention {key} has width {shape[-1]} but the model's hidden size is {hidden_size}")
