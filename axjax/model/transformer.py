"""The Gemma decoder as pure functions over a parameter pytree.

Layers run under `jax.lax.scan` over parameters stacked on a leading layer axis; per-layer differences (RoPE
frequencies, sliding window) are scanned inputs. Edits of the frozen model (`Edits`: intervention sites after
layers, LoRA on the attention output projection of layers) split the scan into segments (`Edits.segments`):
one ends at every intervention site, and consecutive LoRA layers form segments of their own whose adapters are
scanned inputs too. With one site at layer L: layers 0..L, the intervention, layers L+1..N-1. The stream below
the first edit is cut from the gradient, so nothing is differentiated through the frozen prefix.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax import processes
from axjax.errors import AxjaxError
from axjax.model.adapters import Lora
from axjax.model.config import GemmaConfig
from axjax.model.interventions import Intervention, InterventionContext, Sites, as_sites, check_width
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
               collect: bool = False, remat: bool = False, lora: Lora | None = None, lora_params: Any = None,
               lora_rng: Array | None = None) -> tuple[Array, LayerCache | None, Array | None]:
  """Runs the stacked `layers` (model layers start, start+1, ...) under one scan; `cache` is stacked likewise.

  With `lora`, every one of these layers carries an adapter: `lora_params` stacked likewise (`Lora.segment`);
  `lora_rng` (training) turns its dropout on, with a key per layer.
  Returns the residual stream, the updated cache and (if `collect`) the stream after each layer.
  """
  count = jax.tree.leaves(layers)[0].shape[0]
  if count == 0:
    return x, cache, (jnp.zeros((0,) + x.shape, x.dtype) if collect else None)
  freqs, windows = layer_tables(config)
  block = DecoderBlock(config, x.dtype)
  stop = start + count

  def body(h, xs):
    p, inv_freq, window, layer_cache, adapter = xs
    o_delta = None
    if lora is not None:
      adapter_params, layer = adapter
      key = None if lora_rng is None else jax.random.fold_in(lora_rng, layer)
      o_delta = functools.partial(lora.delta, adapter_params, rng=key)
    ctx = LayerContext(frame, inv_freq, window, cache_index)
    h, layer_cache = block.apply({"params": p}, h, ctx, layer_cache, o_delta)
    return h, (layer_cache, h if collect else None)

  if remat:
    body = jax.checkpoint(body)
  adapters = None if lora is None else (lora_params, jnp.arange(start, stop))
  xs = (layers, jnp.asarray(freqs[start:stop]), jnp.asarray(windows[start:stop]), cache, adapters)
  x, (cache, hidden) = jax.lax.scan(body, x, xs)
  return x, cache, hidden


class Segment(NamedTuple):
  """Layers [start, stop) under one scan, then intervention site `site` (an index into the sites), if any.

  `lora` is the range [i, j) of the LoRA layers that these layers are (then all of them are), None if none is.
  """

  start: int
  stop: int
  lora: tuple[int, int] | None
  site: int | None


@dataclasses.dataclass(frozen=True)
class Edits:
  """What a run changes in the frozen model (static under jit): intervention sites and LoRA adapters."""

  sites: Sites = ()
  lora: Lora | None = None

  def segments(self, after: int, end: int) -> tuple[Segment, ...]:
    """The segments running layers after+1..end-1 from the stream after layer `after` (-1: the embeddings).

    Sites at layers after..end-1 act (one at `after` on the incoming stream), LoRA at layers after+1..end-1.
    """
    first = after + 1
    sites = {site.layer: i for i, site in enumerate(self.sites) if after <= site.layer < end}
    lora_index = {layer: i for i, layer in enumerate(self.lora.layers)} if self.lora else {}
    targeted = {layer for layer in lora_index if first <= layer < end}
    lora_ends = {layer for layer in targeted if layer - 1 not in targeted}
    lora_ends |= {layer + 1 for layer in targeted if layer + 1 not in targeted}
    cuts = sorted({first, end} | {layer + 1 for layer in sites} | lora_ends)
    out = [Segment(first, first, None, sites[after])] if after in sites else []
    for start, stop in zip(cuts, cuts[1:]):
      lora = (lora_index[start], lora_index[start] + stop - start) if start in targeted else None
      out.append(Segment(start, stop, lora, sites.get(stop - 1)))
    return tuple(out)


class EditValues(NamedTuple):
  """The arrays of a run's edits: per-site params, where the sites act, LoRA params and dropout key."""

  site_params: tuple = ()
  site_mask: Array | None = None  # [B, T] bool, padding already excluded
  lora_params: Any = None
  lora_rng: Array | None = None


def prepare_edits(config: GemmaConfig, intervention: Intervention | Sequence[Intervention] | None,
                  intervention_params: Any, lora: Lora | None, lora_params: Any, batch: int,
                  after: int = -1) -> tuple[Edits, tuple]:
  """Checks a run's edits (layers and shapes, so also under tracing; one clear error each) and returns them
  with the per-site params.

  `after` is the layer whose output the run starts from: no site may lie below it, no LoRA layer at or below.
  """
  sites, site_params = as_sites(intervention, intervention_params)
  for site, p in zip(sites, site_params):
    config.check_layer(site.layer)
    check_width(p, config.hidden_size, site.width_keys)
    if site.layer < after:
      raise AxjaxError(f"an intervention site at layer {site.layer} lies below layer {after}, where the run starts")
  if lora is not None:
    lora.check(config, lora_params, batch)
    if lora.layers[0] <= after:
      raise AxjaxError(f"LoRA layer {lora.layers[0]} lies at or below layer {after}, where the run starts")
  return Edits(sites, lora), site_params


def run_segments(segments: Sequence[Segment], layers: Sequence[Params], config: GemmaConfig, x: Array,
                 frame: AttentionFrame, edits: Edits, values: EditValues, caches: Sequence[LayerCache] | None = None,
                 cache_index: Array | None = None, collect: bool = False, remat: bool = False
                 ) -> tuple[Array, tuple, Array | None]:
  """Runs `segments` (their stacked `layers` and `caches`, one per segment) with the edits' interventions and
  LoRA. The stream entering the first edit is cut from the gradient.

  Returns the stream, the updated caches and (if `collect`) the stream after each layer, before any edit.
  """
  ctx = InterventionContext(values.site_mask, frame.q_positions)
  frozen = True  # no edit has acted yet: the stream so far comes from the frozen prefix
  new_caches, hidden = [], []
  for i, seg in enumerate(segments):
    lora_params = None
    if seg.lora is not None:
      if frozen:
        x, frozen = jax.lax.stop_gradient(x), False
      lora_params = edits.lora.segment(values.lora_params, *seg.lora)
    x, cache, hid = run_layers(layers[i], config, x, frame, seg.start, None if caches is None else caches[i],
                               cache_index, collect, remat, edits.lora if seg.lora else None, lora_params,
                               values.lora_rng)
    new_caches.append(cache)
    hidden.append(hid)
    if seg.site is not None:
      if frozen:
        x, frozen = jax.lax.stop_gradient(x), False
      x = edits.sites[seg.site].apply(values.site_params[seg.site], x, ctx)
  return x, tuple(new_caches), (jnp.concatenate(hidden, axis=0) if collect else None)


def _run(params: Params, config: GemmaConfig, x: Array, frame: AttentionFrame, edits: Edits, values: EditValues,
         after: int, end: int, collect: bool, remat: bool) -> tuple[Array, Array | None]:
  """Layers after+1..end-1 from the stream after layer `after`, with the edits: the stream and collected layers."""
  segments = edits.segments(after, end)
  layers = [layer_slice(params, seg.start, seg.stop) for seg in segments]
  x, _, hidden = run_segments(segments, layers, config, x, frame, edits, values, collect=collect, remat=remat)
  return x, hidden


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
            intervention: Intervention | Sequence[Intervention] | None = None, intervention_params: Any = None,
            intervention_mask: Array | None = None, lora: Lora | None = None, lora_params: Any = None,
            lora_rng: Array | None = None, logit_positions: Array | None = None,
            stop_after_layer: int | None = None, collect_hidden: bool = False) -> ForwardOutput:
  """Runs the decoder on tokens [B, T] with padding mask [B, T] (1 = real token; left padding is fine).

  - `intervention` (+ its params) edits the residual stream after its layer, at `intervention_mask`
    positions (default: every real token). Several sites: a sequence of interventions at increasing layers and
    a sequence of their params, one per site, all acting at the same positions.
  - `lora` (+ its params, `adapters.Lora`) adds LoRA to the attention output projection of its layers;
    `lora_rng` turns its dropout on (training).
  - Layers below the first edit get no gradient.
  - `stop_after_layer=L` returns the residual stream after layer L (and after a site at L) and skips the layers
    above and logits; edits above L do nothing.
  - `logit_positions` [B, P] computes logits only at those positions (avoids a [B, T, V] tensor).
  - `collect_hidden` also returns the stream after every layer that ran (before any intervention).
  """
  check_tokens(tokens, config)
  if stop_after_layer is not None:
    config.check_layer(stop_after_layer)
  edits, site_params = prepare_edits(config, intervention, intervention_params, lora, lora_params,
                                     tokens.shape[0])
  values = EditValues(site_params, intervention_mask, lora_params, lora_rng)
  return _forward(params, config, tokens, mask, edits, values, logit_positions, stop_after_layer, collect_hidden)


@functools.partial(jax.jit, static_argnums=(1, 4, 7, 8))
def _forward(params, config, tokens, mask, edits, values, logit_positions, stop_after_layer,
             collect_hidden) -> ForwardOutput:
  chex.assert_rank(tokens, 2)
  mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
  chex.assert_equal_shape([tokens, mask])
  values = values._replace(site_mask=mask if values.site_mask is None else values.site_mask.astype(bool) & mask)
  end = config.num_layers if stop_after_layer is None else stop_after_layer + 1
  x = embed(params, config, tokens)
  x, all_hidden = _run(params, config, x, frame_from_mask(mask), edits, values, -1, end, collect_hidden, False)
  if stop_after_layer is not None:
    return ForwardOutput(None, x, all_hidden)
  if logit_positions is not None:
    x = jnp.take_along_axis(x, logit_positions[..., None], axis=1)
  return ForwardOutput(unembed(params, config, x), None, all_hidden)


def run_above(params: Params, config: GemmaConfig, hidden: Array, mask: Array, after_layer: int, *,
              intervention: Intervention | Sequence[Intervention] | None = None, intervention_params: Any = None,
              intervention_mask: Array | None = None, lora: Lora | None = None, lora_params: Any = None,
              lora_rng: Array | None = None, remat: bool = False) -> Array:
  """The residual stream after the last layer [B, T, d] (before the final norm), from `hidden` [B, T, d], the
  stream after `after_layer` (the frozen model's cached activations), through the layers above it with
  `forward`'s edits: sites at `after_layer` and above (one at `after_layer` edits `hidden` itself), LoRA layers
  above it. `remat` recomputes the layers' activations in the backward pass instead of keeping them.

  Traceable: callers jit (and vmap over concepts) it with what follows, e.g. `unembed` or `lm_loss.token_nll`.
  """
  config.check_layer(after_layer)
  chex.assert_rank([hidden, mask], [3, 2])
  chex.assert_equal_shape_prefix([hidden, mask], 2)
  edits, site_params = prepare_edits(config, intervention, intervention_params, lora, lora_params,
                                     hidden.shape[0], after_layer)
  mask = mask.astype(bool)
  site_mask = mask if intervention_mask is None else intervention_mask.astype(bool) & mask
  values = EditValues(site_params, site_mask, lora_params, lora_rng)
  x, _ = _run(params, config, hidden, frame_from_mask(mask), edits, values, after_layer, config.num_layers,
              False, remat)
  return x
