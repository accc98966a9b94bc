"""The Gemma decoder as pure functions over a parameter pytree.

Layers run under `jax.lax.scan` over parameters stacked on a leading layer axis; per-layer differences (RoPE
frequencies, sliding window) are scanned inputs. An intervention at layer L splits the scan there: layers
0..L run first (their output is cut from the gradient), the intervention is applied, then layers L+1..N-1.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax import processes
from axjax.errors import AxjaxError
from axjax.model.config import GemmaConfig
from axjax.model.interventions import Intervention, InterventionContext, check_width
from axjax.model.layers import AttentionFrame, DecoderBlock, LayerCache, LayerContext, RMSNorm

Array = jax.Array
Params = dict[str, Any]


class ForwardOutput(NamedTuple):
  logits: Array | None  # [B, T or P, V] float32; None when the forward stopped early
  hidden: Array | None  # [B, T, d] residual stream after `stop_after_layer`
  all_hidden: Array | None  # [N, B, T, d] residual stream after every layer that ran (pre-intervention)


def layer_tables(config: GemmaConfig) -> tuple[np.ndarray, np.ndarray]:
  """Per-layer RoPE inverse frequencies [N, hd/2] (float32) and windows [N] (0 = global attention)."""
  exponents = np.arange(0, config.head_dim, 2, dtype=np.float32) / np.float32(config.head_dim)

  def inv_freq(theta: float, scale: float) -> np.ndarray:
    return (np.float32(1.0) / (np.float32(theta) ** exponents) / np.float32(scale)).astype(np.float32)

  local = inv_freq(config.rope_theta_local, config.rope_scale_local)
  glob = inv_freq(config.rope_theta_global, config.rope_scale_global)
  freqs = np.stack([local if s else glob for s in config.sliding_layers])
  windows = np.array([config.sliding_window if s else 0 for s in config.sliding_layers], np.int32)
  return freqs, windows


def init_params(config: GemmaConfig, rng: Array, dtype=jnp.float32) -> Params:
  """Random parameters in axjax's layout (for tests and benchmarks; real weights come from `axjax.load`)."""
  k_embed, k_layers = jax.random.split(rng)
  b, t = 1, 2
  frame = AttentionFrame(jnp.zeros((b, t), jnp.int32), jnp.zeros((b, t), jnp.int32), jnp.ones((b, t), bool))
  block = DecoderBlock(config, dtype)
  x = jnp.zeros((b, t, config.hidden_size), dtype)
  freqs, windows = layer_tables(config)
  init_one = lambda k: block.init(k, x, LayerContext(frame, freqs[0], windows[0]))["params"]
  layers = jax.vmap(init_one)(jax.random.split(k_layers, config.num_layers))
  params = {
      "embed": jax.random.normal(k_embed, (config.vocab_size, config.hidden_size)) * 0.02,
      "layers": layers,
      "final_norm": {"scale": jnp.zeros((config.hidden_size,))},
  }
  return jax.tree.map(lambda a: a.astype(dtype), params)


def frame_from_mask(mask: Array) -> AttentionFrame:
  """Positions count from a row's first real token, so a left-padded row sees the same positions as an unpadded
  one, and pads after a right-padded row continue its count (HF's positions for a right-padded batch: AxBench's
  ReFT-r1 reads the layer-L state of the first such pad)."""
  mask = mask.astype(bool)
  first = jnp.argmax(mask, axis=-1)[:, None]
  positions = jnp.maximum(jnp.arange(mask.shape[-1])[None] - first, 0).astype(jnp.int32)
  return AttentionFrame(positions, positions, mask)


def embed(params: Params, config: GemmaConfig, tokens: Array) -> Array:
  """Token embeddings times sqrt(d), the scale rounded to the parameter dtype as HF does."""
  table = params["embed"]
  return jnp.take(table, tokens, axis=0) * jnp.asarray(math.sqrt(config.hidden_size), table.dtype)


def layer_slice(params: Params, start: int, stop: int) -> Params:
  """The stacked parameters of layers [start, stop). Slice once, outside loops, so no step copies weights."""
  return jax.tree.map(lambda a: a[start:stop], params["layers"])


def run_layers(layers: Params, config: GemmaConfig, x: Array, frame: AttentionFrame, start: int,
               cache: LayerCache | None = None, cache_index: Array | None = None,
               collect: bool = False, remat: bool = False) -> tuple[Array, LayerCache | None, Array | None]:
  """Runs the stacked `layers` (model layers start, start+1, ...) under one scan; `cache` is stacked likewise.

  Returns the residual stream, the updated cache and (if `collect`) the stream after each layer.
  """
  count = jax.tree.leaves(layers)[0].shape[0]
  if count == 0:
    return x, cache, (jnp.zeros((0,) + x.shape, x.dtype) if collect else None)
  freqs, windows = layer_tables(config)
  block = DecoderBlock(config, x.dtype)

  def body(h, xs):
    p, inv_freq, window, layer_cache = xs
    h, layer_cache = block.apply({"params": p}, h, LayerContext(frame, inv_freq, window, cache_index), layer_cache)
    return h, (layer_cache, h if collect else None)

  if remat:
    body = jax.checkpoint(body)
  stop = start + count
  xs = (layers, jnp.asarray(freqs[start:stop]), jnp.asarray(windows[start:stop]), cache)
  x, (cache, hidden) = jax.lax.scan(body, x, xs)
  return x, cache, hidden


def unembed(params: Params, config: GemmaConfig, h: Array) -> Array:
  """Final norm, tied unembedding and final soft-cap: float32 logits [..., V]."""
  h = RMSNorm(config.rms_norm_eps).apply({"params": params["final_norm"]}, h)
  logits = jnp.einsum("...d,vd->...v", h, params["embed"]).astype(jnp.float32)
  if config.final_logit_softcap:
    logits = jnp.tanh(logits / config.final_logit_softcap) * config.final_logit_softcap
  return logits


def check_tokens(tokens: Any, config: GemmaConfig) -> None:
  """Refuses token ids outside the vocabulary (checked on concrete arrays, before tracing)."""
  if isinstance(tokens, jax.core.Tracer):
    return
  arr = processes.to_host(tokens)
  if arr.size and (arr.min() < 0 or arr.max() >= config.vocab_size):
    raise AxjaxError(f"token ids must lie in [0, {config.vocab_size}); got values from {arr.min()} to {arr.max()}")


def forward(params: Params, config: GemmaConfig, tokens: Array, mask: Array | None = None, *,
            intervention: Intervention | None = None, intervention_params: Any = None,
            intervention_mask: Array | None = None, logit_positions: Array | None = None,
            stop_after_layer: int | None = None, collect_hidden: bool = False) -> ForwardOutput:
  """Runs the decoder on tokens [B, T] with padding mask [B, T] (1 = real token; left padding is fine).

  - `intervention` (+ its params) edits the residual stream after its layer, at `intervention_mask`
    positions (default: every real token). Layers up to that one get no gradient.
  - `stop_after_layer=L` returns the residual stream after layer L and skips the layers above and logits.
  - `logit_positions` [B, P] computes logits only at those positions (avoids a [B, T, V] tensor).
  - `collect_hidden` also returns the stream after every layer that ran.
  """
  check_tokens(tokens, config)
  if stop_after_layer is not None:
    config.check_layer(stop_after_layer)
  if intervention is not None:
    config.check_layer(intervention.layer)
    check_width(intervention_params, config.hidden_size)
  return _forward(params, config, tokens, mask, intervention, intervention_params, intervention_mask,
                  logit_positions, stop_after_layer, collect_hidden)


@functools.partial(jax.jit, static_argnums=(1, 4, 8, 9))
def _forward(params, config, tokens, mask, intervention, intervention_params, intervention_mask,
             logit_positions, stop_after_layer, collect_hidden) -> ForwardOutput:
  chex.assert_rank(tokens, 2)
  mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
  chex.assert_equal_shape([tokens, mask])
  frame = frame_from_mask(mask)
  n = config.num_layers
  split = n if intervention is None else intervention.layer + 1
  stop = n if stop_after_layer is None else stop_after_layer + 1
  x = embed(params, config, tokens)
  x, _, hid_a = run_layers(layer_slice(params, 0, min(split, stop)), config, x, frame, 0, collect=collect_hidden)
  hid_b = None
  if split < stop or (intervention is not None and split == stop):
    x = jax.lax.stop_gradient(x)
    ctx = InterventionContext(mask if intervention_mask is None else intervention_mask & mask, frame.q_positions)
    x = intervention.apply(intervention_params, x, ctx)
    x, _, hid_b = run_layers(layer_slice(params, split, stop), config, x, frame, split, collect=collect_hidden)
  all_hidden = None
  if collect_hidden:
    all_hidden = hid_a if hid_b is None else jnp.concatenate([hid_a, hid_b], axis=0)
  if stop_after_layer is not None:
    return ForwardOutput(None, x, all_hidden)
  if logit_positions is not None:
    x = jnp.take_along_axis(x, logit_positions[..., None], axis=1)
  return ForwardOutput(unembed(params, config, x), None, all_hidden)
