"""Batched autoregressive decoding with a KV cache, all inside one compiled `jax.lax.while_loop`.

Prompts are left-padded so every row writes its next token into the same cache slot. The cache is kept as
one stack per segment of the layer scan (`transformer.Edits.segments`: split at every intervention site and
around LoRA layers), so the splits need no copies. Every row may carry its own intervention and LoRA parameters
(leading batch axis) and its own random key, so a row's tokens do not depend on the batch it runs in.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp

from axjax.generation.sampling import SamplingConfig, sample_next
from axjax.model.adapters import Lora
from axjax.model.config import GemmaConfig
from axjax.model.interventions import Intervention
from axjax.model.layers import AttentionFrame, LayerCache
from axjax.model.transformer import (Edits, EditValues, check_tokens, embed, frame_from_mask, layer_slice,
                                     prepare_edits, run_segments, unembed)

Array = jax.Array


class GenerationOutput(NamedTuple):
  tokens: Array  # [B, max_new_tokens] int32; after a stop token, `pad_id`
  lengths: Array  # [B] number of tokens before the first stop token (the stop token excluded)


def _empty_cache(config: GemmaConfig, layers: int, batch: int, slots: int, dtype) -> LayerCache:
  shape = (layers, batch, slots, config.num_kv_heads, config.head_dim)
  return LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def _step(params, segments, layers, config: GemmaConfig, tokens: Array, frame: AttentionFrame, caches,
          cache_index: Array, edits: Edits, values: EditValues):
  """Runs new tokens [B, t] through the segments' layers with the edits, writing their caches.

  Returns the last position's logits [B, V] and the caches.
  """
  x = embed(params, config, tokens)
  x, caches, _ = run_segments(segments, layers, config, x, frame, edits, values, caches, cache_index)
  return unembed(params, config, x[:, -1]), caches


def generate_tokens(params, config: GemmaConfig, prompt: Array, prompt_mask: Array, rng: Array,
                    sampling: SamplingConfig = SamplingConfig(), stop_ids: tuple[int, ...] = (),
                    pad_id: int = 0, intervention: Intervention | Sequence[Intervention] | None = None,
                    intervention_params: Any = None, prompt_intervention_mask: Array | None = None, *,
                    intervene_generated: bool = True, lora: Lora | None = None,
                    lora_params: Any = None) -> GenerationOutput:
  """Generates up to `sampling.max_new_tokens` tokens for left-padded prompts [B, T] with mask [B, T].

  `rng` is one key, or [B] keys (one per row). The intervention (if any; several sites as in
  `transformer.forward`) acts at the prompt tokens of `prompt_intervention_mask` [B, T] (default: every real
  prompt token, as AxBench's steering does) and, if `intervene_generated`, at every generated token (False:
  the prompt positions only, as pyreft's LoReFT steers). `lora` (+ params, per row or shared) adapts its layers
  at every token, without dropout.
  """
  check_tokens(prompt, config)
  edits, site_params = prepare_edits(config, intervention, intervention_params, lora, lora_params,
                                     prompt.shape[0])
  if rng.ndim == 0:
    rng = jax.random.split(rng, prompt.shape[0])
  chex.assert_shape(rng, (prompt.shape[0],))
  if prompt_intervention_mask is None:
    prompt_intervention_mask = prompt_mask
  chex.assert_equal_shape([prompt, prompt_intervention_mask])
  values = EditValues(site_params, prompt_intervention_mask, lora_params)
  return _generate(params, config, prompt, prompt_mask, rng, sampling, tuple(stop_ids), pad_id, edits, values,
                   intervene_generated)


@functools.partial(jax.jit, static_argnums=(1, 5, 6, 7, 8, 10))
def _generate(params, config, prompt, prompt_mask, row_keys, sampling, stop_ids, pad_id, edits, values,
              intervene_generated) -> GenerationOutput:
  chex.assert_rank([prompt, prompt_mask], 2)
  chex.assert_equal_shape([prompt, prompt_mask])
  batch, prompt_len = prompt.shape
  new = sampling.max_new_tokens
  slots = prompt_len + new
  prompt_mask = prompt_mask.astype(bool)
  dtype = params["embed"].dtype
  segments = edits.segments(-1, config.num_layers)
  layers = tuple(layer_slice(params, seg.start, seg.stop) for seg in segments)
  caches = tuple(_empty_cache(config, seg.stop - seg.start, batch, slots, dtype) for seg in segments)

  # Positions of every slot: prompt tokens count real tokens only; generated ones continue from there.
  prompt_frame = frame_from_mask(prompt_mask)
  n_real = jnp.sum(prompt_mask, axis=-1).astype(jnp.int32)
  gen_positions = n_real[:, None] + jnp.arange(new, dtype=jnp.int32)[None]
  k_positions = jnp.concatenate([prompt_frame.q_positions, gen_positions], axis=1)
  k_valid = jnp.concatenate([prompt_mask, jnp.ones((batch, new), bool)], axis=1)

  frame = AttentionFrame(prompt_frame.q_positions, k_positions, k_valid)
  prompt_values = values._replace(site_mask=values.site_mask.astype(bool) & prompt_mask)
  logits, caches = _step(params, segments, layers, config, prompt, frame, caches, jnp.int32(0), edits,
                         prompt_values)
  step_values = values._replace(site_mask=jnp.full((batch, 1), intervene_generated))
  stops = jnp.asarray(stop_ids or (-1,), jnp.int32)

  def cond(state):
    step, _, _, _, done = state
    return (step < new) & ~jnp.all(done)

  def body(state):
    step, logits, caches, out, done = state
    keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
    token = jnp.where(done, pad_id, sample_next(logits, keys, sampling))
    out = out.at[:, step].set(token)
    done = done | jnp.isin(token, stops)
    step_frame = AttentionFrame(gen_positions[:, step][:, None], k_positions, k_valid)
    logits, caches = _step(params, segments, layers, config, token[:, None], step_frame, caches, prompt_len + step,
                           edits, step_values)
    return step + 1, logits, caches, out, done

  out = jnp.full((batch, new), pad_id, jnp.int32)
  state = (jnp.int32(0), logits, caches, out, jnp.zeros((batch,), bool))
  _, _, _, out, _ = jax.lax.while_loop(cond, body, state)
  is_stop = jnp.isin(out, stops)
  lengths = jnp.where(jnp.any(is_stop, axis=1), jnp.argmax(is_stop, axis=1), new).astype(jnp.int32)
  return GenerationOutput(out, lengths)
