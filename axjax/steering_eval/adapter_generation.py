"""Steered generation with per-concept adapters (LoReFT, LoRA): every row carries its own concept's adapter.

AxBench steers these methods without a factor: LoReFT edits the first and last prompt tokens of every row
(pyreft's f5+l5 locations, `intervene_on_prompt=True`; the generated tokens are left alone) and LoRA adapts
o_proj at every prompt and generated token. Rows of many concepts share one compiled batch: each row's params
are gathered from the trained stack, so a row's tokens do not depend on the other rows of its batch.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax.errors import AxjaxError
from axjax.generation.decode import GenerationOutput, generate_tokens
from axjax.generation.sampling import SamplingConfig
from axjax.methods.adapter_training import Adapters
from axjax.model.adapters import first_last_mask
from axjax.model.config import GemmaConfig


def steer_generate(params: Any, config: GemmaConfig, adapters: Adapters, stack: dict[str, Any],
                   concept_index: Any, prompt: Any, prompt_mask: Any, rng: jax.Array,
                   sampling: SamplingConfig = SamplingConfig(), stop_ids: tuple[int, ...] = (),
                   pad_id: int = 0, factors: Any = None) -> GenerationOutput:
  """Generates for left-padded prompts [B, T] (mask [B, T]), row i with adapter `concept_index[i]` of `stack`
  ([C, ...], as `TrainedAdapters.params`). `rng`: one key or [B] keys (one per row, as `generate_tokens`).
  `factors` [B]: RePS's steering factor per row (LoReFT's edit and LoRA's delta scaled by it); None: AxBench's
  adapters, which steer without one."""
  adapters.check(config, stack)
  concepts = len(jax.tree.leaves(stack)[0])
  index = np.asarray(concept_index)
  chex.assert_rank([prompt, prompt_mask], 2)
  chex.assert_equal_shape([prompt, prompt_mask])
  if index.shape != (np.shape(prompt)[0],) or not np.issubdtype(index.dtype, np.integer):
    raise AxjaxError(f"concept_index needs one integer per prompt row ({np.shape(prompt)[0]}); got shape "
                     f"{index.shape}")
  if index.size and (index.min() < 0 or index.max() >= concepts):
    raise AxjaxError(f"concept_index must lie in 0..{concepts - 1} (the stack's concepts); got {index.min()} "
                     f"to {index.max()}")
  rows = jax.tree.map(lambda x: jnp.asarray(x)[index], stack)
  if factors is not None:
    factors = jnp.asarray(factors, jnp.float32)
    chex.assert_shape(factors, index.shape)
    if adapters.kind == "LoRA":
      rows = {**rows, "b": rows["b"] * factors[:, None, None, None]}
  edits = adapters.edits(rows, batched=True)
  if factors is not None and adapters.kind == "LoReFT":
    edits["intervention_params"] = tuple({**site, "factor": factors} for site in edits["intervention_params"])
  where = None
  if adapters.kind == "LoReFT":
    where = first_last_mask(jnp.asarray(prompt_mask), *adapters.positions)
  return generate_tokens(params, config, prompt, prompt_mask, rng, sampling, tuple(stop_ids), pad_id,
                         edits.pop("intervention", None), edits.pop("intervention_params", None), where,
                         intervene_generated=False, **edits)
