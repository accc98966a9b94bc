"""Flax layers of one Gemma decoder block: RMSNorm, attention with RoPE and an optional KV cache, GeGLU MLP.

Each module is applied with explicit parameters (`Module().apply({"params": p}, ...)`), so a block is a pure
function of its parameters and can run under `jax.lax.scan` over parameters stacked on a layer axis.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from axjax.model.config import GemmaConfig

Array = jax.Array
OutputDelta = Callable[[Array], Array]  # o_proj's input [B, T, heads * hd] -> a delta of its output [B, T, d]


class AttentionFrame(NamedTuple):
  """Where queries and keys sit: positions for RoPE, masks for padding, causality and the sliding window.

  Without a cache the keys are the queries' own tokens; with one they are the cache slots.
  """

  q_positions: Array  # [B, T] int32
  k_positions: Array  # [B, S] int32
  k_valid: Array  # [B, S] bool: the slot holds a real (non-pad) token


class LayerContext(NamedTuple):
  """Per-layer inputs besides the residual stream: token geometry, this layer's RoPE and window, cache slot."""

  frame: AttentionFrame
  inv_freq: Array  # [hd/2] RoPE inverse frequencies of this layer
  window: Array  # [] sliding window in tokens; 0 = global attention
  cache_index: Array | None = None  # first cache slot written by these tokens


class LayerCache(NamedTuple):
  """Keys and values of one layer (or, stacked, of several) for every cache slot."""

  k: Array  # [B, S, K, hd]
  v: Array  # [B, S, K, hd]


class RMSNorm(nn.Module):
  """Gemma RMSNorm: statistics and the (1 + scale) product in float32, cast back to the input dtype (as HF)."""

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotary embedding in HF's rotate-half layout. x: [B, T, N, hd]; positions: [B, T]; inv_freq: [hd/2]."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq.astype(jnp.float32)  # [B, T, hd/2]
  cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
  sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention_mask(frame: AttentionFrame, window: Array) -> Array:
  """[B, T, S] bool: key is real, not in the future, and within `window` positions (window 0 = global)."""
  q = frame.q_positions[:, :, None]
  k = frame.k_positions[:, None, :]
  in_window = jnp.where(window > 0, q - k < window, True)
  return frame.k_valid[:, None, :] & (k <= q) & in_window


class Attention(nn.Module):
  """Grouped-query self-attention with QK-norm, RoPE, logit soft-capping and per-layer sliding windows.

  `o_delta` (LoRA) adds a function of the output projection's input to its output, in the delta's dtype (the
  sum cast back to the model's, as peft does).
  """

  config: GemmaConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, ctx: LayerContext, cache: LayerCache | None = None,
               o_delta: OutputDelta | None = None) -> tuple[Array, LayerCache | None]:
    c = self.config
    frame = ctx.frame
    d, h, kv, hd = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    init = nn.initializers.normal(0.02)
    wq = self.param("q", init, (d, h, hd), self.dtype)
    wk = self.param("k", init, (d, kv, hd), self.dtype)
    wv = self.param("v", init, (d, kv, hd), self.dtype)
    wo = self.param("o", init, (h, hd, d), self.dtype)
    q = jnp.einsum("btd,dnh->btnh", x, wq)
    k = jnp.einsum("btd,dkh->btkh", x, wk)
    v = jnp.einsum("btd,dkh->btkh", x, wv)
    if c.use_qk_norm:
      q = RMSNorm(c.rms_norm_eps, name="q_norm")(q)
      k = RMSNorm(c.rms_norm_eps, name="k_norm")(k)
    q = apply_rope(q, frame.q_positions, ctx.inv_freq)
    k = apply_rope(k, frame.q_positions, ctx.inv_freq)
    if cache is not None:  # write this step's keys/values into their slots, then attend over all slots
      k = jax.lax.dynamic_update_slice_in_dim(cache.k, k, ctx.cache_index, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cache.v, v, ctx.cache_index, axis=1)
      cache = LayerCache(k, v)
    b, t = q.shape[:2]
    q = q.reshape(b, t, kv, h // kv, hd)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k) * jnp.asarray(c.query_scale, self.dtype)
    logits = logits.astype(jnp.float32)
    if c.attn_logit_softcap:
      logits = jnp.tanh(logits / c.attn_logit_softcap) * c.attn_logit_softcap
    mask = attention_mask(frame, ctx.window)[:, None, None]
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, h, hd)
    y = jnp.einsum("btnh,nhd->btd", out, wo)
    if o_delta is not None:
      y = (y + o_delta(out.reshape(b, t, h * hd))).astype(y.dtype)
    return y, cache


class MLP(nn.Module):
  """GeGLU feed-forward: down(gelu(gate(x)) * up(x))."""

  config: GemmaConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    init = nn.initializers.normal(0.02)
    gate = self.param("gate", init, (c.hidden_size, c.intermediate_size), self.dtype)
    up = self.param("up", init, (c.hidden_size, c.intermediate_size), self.dtype)
    down = self.param("down", init, (c.intermediate_size, c.hidden_size), self.dtype)
    act = jax.nn.gelu(x @ gate, approximate=c.approximate_gelu)
    return (act * (x @ up)) @ down


class DecoderBlock(nn.Module):
  """Pre-norm attention and MLP with residuals; Gemma 2/3 also normalise each branch's output."""

  config: GemmaConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, ctx: LayerContext, cache: LayerCache | None = None,
               o_delta: OutputDelta | None = None) -> tuple[Array, LayerCache | None]:
    c = self.config
    normed = RMSNorm(c.rms_norm_eps, name="input_norm")(x)
    a, cache = Attention(c, self.dtype, name="attn")(normed, ctx, cache, o_delta)
    if c.use_post_norms:
      a = RMSNorm(c.rms_norm_eps, name="post_attn_norm")(a)
    x = x + a
    m = MLP(c, self.dtype, name="mlp")(RMSNorm(c.rms_norm_eps, name="pre_mlp_norm")(x))
    if c.use_post_norms:
      m = RMSNorm(c.rms_norm_eps, name="post_mlp_norm")(m)
    return x + m, cache
