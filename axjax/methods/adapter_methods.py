"""LoReFT and LoRA as pipeline methods: trained from an `ActivationCache`, kept in a dictionary's extras.

Training reads the concepts' positive examples' residual stream after `Adapters.after` (cached once per
chunk, like every method's activations) and runs `adapter_training.train_adapters` for all of the chunk's
concepts jointly. The dictionary holds no direction: its extras are the adapter stack (LoReFT: rotation,
weight, bias [C, sites, r, d]; LoRA: a [C, layers, d_in, r], b [C, layers, r, d]) and its hyperparameters name
the layers they act at, so steering rebuilds the same `Adapters`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from axjax.dictionary import Dictionary
from axjax.methods.adapter_training import Adapters, adapters_from, train_adapters
from axjax.model.config import GemmaConfig

if TYPE_CHECKING:
  from axjax.methods.fit import ActivationCache


def resolved(kind: str, config: GemmaConfig, hp: dict[str, Any]) -> dict[str, Any]:
  """`hp` with "layers" spelled out ("auto" becomes this model's layers), as the dictionary records them."""
  return {**hp, "layers": "+".join(map(str, adapters_from(kind, config, hp).layers))}


def fit_adapters(name: str, cache: ActivationCache, hp: dict[str, Any], seed: int, progress, checkpoint_dir
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
  """(extras: the trained stack [C, ...], training record {name: [steps, C]}, steps per epoch) of LoReFT or
  LoRA for the cache's concepts."""
  config = cache.model.config
  adapters = adapters_from(name, config, hp)
  examples, acts = cache.examples("lm_positive", layer=adapters.after)
  report = None if progress is None else (lambda done, total: progress(f"train {name}", done, total))
  trained = train_adapters(name, cache.model, examples, acts, overrides=hp, seed=seed,
                           mesh=cache.mesh, progress=report, checkpoint_dir=checkpoint_dir)
  return trained.params, trained.record, trained.steps_per_epoch


def adapters_of(dictionary: Dictionary, config: GemmaConfig) -> tuple[Adapters, dict[str, np.ndarray]]:
  """The `Adapters` of a LoReFT or LoRA dictionary and its params stack [C, ...], checked against the model."""
  adapters = adapters_from(dictionary.method, config, dictionary.hyperparameters)
  stack = {k: dictionary.extras[k] for k in (("rotation", "weight", "bias") if adapters.kind == "LoReFT"
                                              else ("a", "b"))}
  adapters.check(config, stack)
  return adapters, stack
