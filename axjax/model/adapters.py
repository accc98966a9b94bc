"""The trainable adapters of AxBench's LoReFT and LoRA methods, as edits of the frozen Gemma.

LoReFT (pyreft's LoreftIntervention, AxBench's reft.py) is an intervention site per layer (`loreft`): after the
layer, at the positions of the context mask (AxBench: the first 5 and last 5 prompt tokens, `first_last_mask`),

    h <- h + R^T (W h + b - R h),    R [r, d] with orthonormal rows, W [r, d], b [r]   (rank r = 4).

Params per site: {"rotation": U [r, d], "weight": W [r, d], "bias": b [r]}, each with an optional leading batch
axis (one adapter per row). U is unconstrained; R = `orthonormal_rows(U)`, the rows of U orthonormalised in
order (Gram-Schmidt: the QR decomposition of U^T with the triangular factor's diagonal made positive). The map is
smooth wherever U has full rank and leaves orthonormal rows unchanged, so R starts where U is initialised and a
trained pyreft rotation imports exactly. Tensor mapping: pyreft's `rotate_layer` is a Linear(d, r) whose weight
[d, r] is torch-parametrised to orthonormal columns and used as h @ weight, so R = rotate_layer.weight^T (U = the
same); `learned_source` is a Linear(d, r): W = learned_source.weight, b = learned_source.bias (AxBench's saved
LoReFT_weight.pt holds proj_weight [C, d, r] = R^T per concept). pyreft's parametrisation is torch's
`orthogonal()` default for a non-square weight: Householder reflectors built from a [d, r] matrix, composed with
a fixed d x d base ("dynamic trivialisation"). It reaches the same set of R; only the optimiser's path differs,
and the QR form needs d x r numbers per site instead of an extra d x d base.

LoRA (peft, AxBench's lora.py) changes the attention output projection o_proj of its layers (`Lora`):

    o_proj(x) + dropout(x) @ A @ B * alpha / sqrt(r)    (rsLoRA; x [.., heads * head_dim] is o_proj's input)

with A [heads * hd, r] = peft's lora_A.weight^T ([r, d_in]) and B [r, d] = lora_B.weight^T ([d, r]). Params:
{"a": [L, d_in, r], "b": [L, r, d]} stacked over the L targeted layers in increasing order, or with a leading
batch axis, [B, L, d_in, r] and [B, L, r, d], so every row of a batch has its own adapter. Dropout acts only
when a random key is given (training).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp

from axjax.errors import AxjaxError
from axjax.model.config import GemmaConfig
from axjax.model.interventions import Intervention, InterventionContext

Array = jax.Array
PyTree = Any


def orthonormal_rows(u: Array) -> Array:
  """R [..., r, d] with orthonormal rows from an unconstrained U [..., r, d] (r <= d), in float32: QR of U^T
  with the signs fixed so the triangular factor has a positive diagonal (the map is then unique)."""
  q, tri = jnp.linalg.qr(jnp.swapaxes(u.astype(jnp.float32), -1, -2))
  sign = jnp.where(jnp.diagonal(tri, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
  return jnp.swapaxes(q * sign[..., None, :], -1, -2)


def _loreft(params: PyTree, h: Array, ctx: InterventionContext) -> Array:
  u, w, b = params["rotation"], params["weight"], params["bias"]  # [(B,) r, d], [(B,) r, d], [(B,) r]
  chex.assert_equal_shape([u, w])
  chex.assert_equal_shape_prefix([u, b], u.ndim - 1)
  r = orthonormal_rows(u)
  bias = b.astype(jnp.float32)
  bias = bias[:, None] if bias.ndim == 2 else bias  # broadcast over time
  hf = h.astype(jnp.float32)
  to_rank = lambda m: hf @ jnp.swapaxes(m.astype(jnp.float32), -1, -2)  # [B, T, r]
  edit = to_rank(w) + bias - to_rank(r)
  if "factor" in params:  # RePS: alpha (W h + b - R h), alpha per row [B] or shared
    factor = jnp.asarray(params["factor"], jnp.float32)
    chex.assert_rank(factor, {0, 1})
    edit = edit * (factor[:, None, None] if factor.ndim == 1 else factor)
  edited = hf + edit @ r
  return jnp.where(ctx.mask[..., None], edited, hf).astype(h.dtype)


def loreft(layer: int) -> Intervention:
  """A LoReFT site after `layer`: h + R^T (W h + b - R h) at the context mask's positions (see the module
  docstring for the params; with a "factor" alpha, RePS's h + R^T (alpha (W h + b - R h))). Several layers: a
  tuple of sites, `tuple(map(loreft, layers))`."""
  return Intervention(layer=layer, apply=_loreft, name="loreft", width_keys=("rotation", "weight"))


def init_loreft_params(config: GemmaConfig, rng: Array, rank: int = 4) -> dict[str, Array]:
  """One site's params as pyreft initialises them: R a random matrix with orthonormal rows (U = R), W and b
  torch.nn.Linear(d, r)'s uniform(-1/sqrt(d), 1/sqrt(d))."""
  d = config.hidden_size
  if not 0 < rank <= d:
    raise AxjaxError(f"a LoReFT rank must lie in 1..{d} (the model width); got {rank}")
  k_rot, k_w, k_b = jax.random.split(rng, 3)
  bound = 1.0 / math.sqrt(d)
  return {"rotation": orthonormal_rows(jax.random.normal(k_rot, (rank, d))),
          "weight": jax.random.uniform(k_w, (rank, d), jnp.float32, -bound, bound),
          "bias": jax.random.uniform(k_b, (rank,), jnp.float32, -bound, bound)}


def first_last_mask(mask: Array, first: int = 5, last: int = 5) -> Array:
  """[B, T] bool: each row's first `first` and last `last` real tokens of `mask` [B, T] (AxBench's f5+l5
  positions of the prompt; a prompt shorter than first + last is covered whole, as pyreft's truncation does)."""
  mask = mask.astype(bool)
  before = jnp.cumsum(mask, axis=-1)  # real tokens up to and including this one
  after = jnp.sum(mask, axis=-1, keepdims=True) - before  # real tokens after this one
  return mask & ((before <= first) | (after < last))


@dataclasses.dataclass(frozen=True)
class Lora:
  """rsLoRA on the attention output projection (o_proj) of `layers` (AxBench's peft LoRA; see the module
  docstring for the params and their peft names). Static under jit."""

  layers: tuple[int, ...]
  alpha: float = 32.0
  dropout: float = 0.05  # on o_proj's input, in training only (when a random key is given)

  def __post_init__(self):
    object.__setattr__(self, "layers", tuple(self.layers))  # hashable: a static argument under jit

  def check(self, config: GemmaConfig, params: PyTree, batch: int | None = None) -> None:
    """Refuses layers out of range or out of order, and params of the wrong shapes (per-row adapters for other
    than `batch` rows, if given), in one sentence each."""
    for layer in self.layers:
      config.check_layer(layer)
    if not self.layers or list(self.layers) != sorted(set(self.layers)):
      raise AxjaxError(f"LoRA layers must be distinct and in increasing order; got {list(self.layers)}")
    if not isinstance(params, dict) or set(params) != {"a", "b"}:
      raise AxjaxError("LoRA params must be a dict with the keys 'a' and 'b'")
    a, b = params["a"], params["b"]
    n, d_in, d = len(self.layers), config.num_heads * config.head_dim, config.hidden_size
    rows = a.shape[:-3] if a.ndim in (3, 4) else None
    if rows is None or a.shape[-3:-1] != (n, d_in) or b.shape != (*rows, n, a.shape[-1], d):
      raise AxjaxError(f"LoRA params of shapes a {tuple(a.shape)} and b {tuple(b.shape)} do not fit "
                       f"{n} layers of this model: a needs [(B,) {n}, {d_in}, r] and b [(B,) {n}, r, {d}]")
    if batch is not None and rows and rows[0] != batch:
      raise AxjaxError(f"LoRA params carry adapters for {a.shape[0]} rows but the batch has {batch} rows")

  def segment(self, params: PyTree, start: int, stop: int) -> PyTree:
    """The params of targeted layers [start, stop) (indices into `layers`) with the layer axis leading, as a
    scan over those layers takes them: [n, (B,) ...]."""
    return jax.tree.map(lambda x: jnp.moveaxis(x, x.ndim - 3, 0)[start:stop], params)

  def delta(self, params: PyTree, x: Array, rng: Array | None) -> Array:
    """One layer's LoRA output [B, T, d] for o_proj's input x [B, T, d_in], in the params' dtype.

    params: {"a": [(B,) d_in, r], "b": [(B,) r, d]}; `rng` (a key for this layer) turns dropout on."""
    a, b = params["a"], params["b"]
    x = x.astype(a.dtype)
    if rng is not None and self.dropout > 0:
      keep = _keep_mask(rng, 1.0 - self.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.dropout), 0.0).astype(a.dtype)
    return (x @ a) @ b * (self.alpha / math.sqrt(a.shape[-1]))


def _keep_mask(rng: Array, p: float, shape: tuple[int, ...]) -> Array:
  """A dropout keep-mask [B, T, d] whose entries at (row, position) depend on those indices alone, not on the
  padded width T: a concept's right-padded examples drop the same entries in any chunk of concepts."""
  rows, width, d = shape
  token = lambda r, t: jax.random.bernoulli(jax.random.fold_in(jax.random.fold_in(rng, r), t), p, (d,))
  return jax.vmap(jax.vmap(token, (None, 0)), (0, None))(jnp.arange(rows), jnp.arange(width))


def init_lora_params(config: GemmaConfig, lora: Lora, rng: Array, rank: int = 4) -> dict[str, Array]:
  """Params as peft initialises them: A kaiming-uniform (uniform(-1/sqrt(d_in), 1/sqrt(d_in))), B zero, so the
  adapter starts as the identity edit."""
  d_in = config.num_heads * config.head_dim
  bound = 1.0 / math.sqrt(d_in)
  n = len(lora.layers)
  return {"a": jax.random.uniform(rng, (n, d_in, rank), jnp.float32, -bound, bound),
          "b": jnp.zeros((n, rank, config.hidden_size), jnp.float32)}
