"""RePS and its baselines as pipeline methods: own responses, preference pairs and joint training per chunk.

A method's name says its edit and objective: "SV-", "LoReFT-" or "LoRA-" (`preference_training.PreferenceEdit`:
a steering vector after the run's layer, or adapters at several layers) and "-RePS" (scaled SimPO), "-BiPO"
(DPO, factor 1) or "-Lang" (the LM loss). Training generates (once, cached) the model's own response y to each
positive instruction, tokenises prompt + y_c and prompt + y, caches the frozen stream below the edit and runs
`train_preference` for the chunk's concepts jointly. The SV dictionary holds the vectors as its weights and
their biases; LoReFT's and LoRA's hold the adapter stack in extras, their hyperparameters naming the layers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from axjax.data.preference_examples import positive_instructions, preference_examples
from axjax.dictionary import Dictionary
from axjax.errors import AxjaxError
from axjax.methods.activations import layer_activations
from axjax.methods.adapter_training import adapters_from, optimizer_steps_per_epoch
from axjax.methods.own_responses import own_responses
from axjax.methods.preference_training import PreferenceEdit, shared_arrays, train_preference
from axjax.model.config import GemmaConfig

if TYPE_CHECKING:
  from axjax.methods.fit import ActivationCache

_NUMBER = r"-?\d+(\.\d+)?"


def factor_list(name: str, key: str, text: str) -> tuple[float, ...]:
  """The factors of a "+"-joined hyperparameter ("2+4+6"), or one sentence saying what is wrong."""
  if not re.fullmatch(rf"{_NUMBER}(\+{_NUMBER})*", str(text)):
    raise AxjaxError(f"{name}.{key} must be numbers joined by '+' (e.g. 2+4+6), not {text!r}")
  values = tuple(float(v) for v in str(text).split("+"))
  if len(set(values)) != len(values):
    raise AxjaxError(f"{name}.{key} repeats a factor: {text!r}")
  return values


def edit_of(name: str, config: GemmaConfig, hp: dict[str, Any], layer: int) -> PreferenceEdit:
  """The edit method `name` trains: a vector after `layer`, or LoReFT/LoRA at `hp["layers"]`; checked."""
  kind = name.partition("-")[0]
  if kind == "SV":
    edit = PreferenceEdit("vector", (layer,))
  else:
    adapters = adapters_from(kind, config, {**hp, "lora_alpha": 32.0})
    edit = PreferenceEdit(kind, adapters.layers, adapters.rank, adapters.positions,
                          hp["dropout"] if kind == "LoRA" else 0.0)
  edit.check(config)
  return edit


def training_hyperparameters(name: str, hp: dict[str, Any]) -> dict[str, Any]:
  """`hp` as `train_preference` reads it (the training factors as a list), checked."""
  if min(hp["batch_size"], hp["gradient_accumulation_steps"], hp["n_epochs"], hp["response_tokens"]) < 1:
    raise AxjaxError(f"{name} batch_size, gradient_accumulation_steps, n_epochs and response_tokens must be at "
                     "least 1")
  if hp["subtraction"] == "null_out" and not name.startswith("SV-"):
    raise AxjaxError(f"{name}.subtraction=null_out nulls a steering vector out; LoReFT and LoRA subtract by "
                     "negating the factor (negate)")
  return {**hp, "factors": list(factor_list(name, "factors", hp["factors"]))}


def resolved(name: str, config: GemmaConfig, hp: dict[str, Any], layer: int) -> dict[str, Any]:
  """`hp` with the edit's layers spelled out, as the dictionary records them."""
  return {**hp, "layers": "+".join(map(str, edit_of(name, config, hp, layer).layers))}


def fit_preference(name: str, cache: ActivationCache, hp: dict[str, Any], seed: int, progress, checkpoint_dir
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
  """(arrays: SV {"weights", "biases"} or the adapter stack [C, ...], training record {name: [steps, C]}, steps
  per epoch) of a preference method for the cache's concepts."""
  model, config = cache.model, cache.model.config
  edit, train_hp = edit_of(name, config, hp, cache.layer), training_hyperparameters(name, hp)
  ids = [c.concept_id for c in cache.concepts]
  instructions = positive_instructions(cache.data, ids, cache.max_examples)
  report = lambda stage: None if progress is None else (lambda done, total: progress(stage, done, total))
  responses = own_responses(model, instructions, max_new_tokens=hp["response_tokens"],
                            progress=report("own responses"))
  examples = preference_examples(cache.data, model.tokenizer, dict(zip(instructions, responses)), concept_ids=ids,
                                 max_examples=cache.max_examples)
  arrays = shared_arrays(edit, examples, hp["length_norm"])
  rows = len(arrays["tokens"])
  acts = layer_activations(cache.placed_params, config, arrays["tokens"], arrays["mask"], edit.after,
                           progress=None if progress is None else lambda done: progress(
                               "activations (preference pairs)", done, rows), mesh=cache.mesh)
  per_epoch = optimizer_steps_per_epoch(examples.concept.row_valid, hp)
  steps = report(f"train {name}")
  params, record = train_preference(
      edit, cache.placed_params, config, examples, acts, train_hp, seed=seed, mesh=cache.mesh,
      checkpoint_dir=checkpoint_dir,
      progress=None if steps is None else lambda step, _: steps(step + 1, hp["n_epochs"] * per_epoch))
  if edit.kind == "vector":
    params = {"weights": params["vector"], "biases": params["bias"]}
  return params, record, per_epoch


def adapter_stack(dictionary: Dictionary, config: GemmaConfig) -> tuple[PreferenceEdit, dict[str, np.ndarray]]:
  """The edit of a LoReFT or LoRA preference dictionary and its params stack [C, ...], checked."""
  edit = edit_of(dictionary.method, config, dictionary.hyperparameters, dictionary.layer)
  keys = ("rotation", "weight", "bias") if edit.kind == "LoReFT" else ("a", "b")
  stack = {k: dictionary.extras[k] for k in keys}
  edit.adapters.check(config, stack)
  return edit, stack
