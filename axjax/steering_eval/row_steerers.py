"""How the rows of each steering method that does not add a vector generate (`generate_rows`' `steerers`).

A `RowSteerer` says what a row's model input is and how a batch of its rows generates: LoReFT and LoRA (also
RePS's, scaled by each row's factor) gather each row's concept adapter inside one compiled decode (rows of many
concepts share a batch), the SAE methods
under clamping set (or raise) each row's feature through its JumpReLU encoder, PromptSteering
feeds AxBench's steered input to the unedited model, and SFT fine-tunes the model for one concept at a time
(`per_concept`: `start` trains it when that concept still has rows to generate, so a resumed run retrains
nothing it finished).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from axjax import atomic_files
from axjax.data.examples import lm_examples
from axjax.dictionary import Dictionary
from axjax.dictionary.store import texts_of
from axjax.generation.decode import GenerationOutput, generate_tokens
from axjax.generation.sampling import SamplingConfig
from axjax.generation.text import stop_token_ids
from axjax.loading.load import LoadedModel
from axjax.methods import adapter_methods, preference_methods, prompting, sae, sae_methods, sft
from axjax.methods.registry import method
from axjax.steering_eval.adapter_generation import steer_generate
from axjax.steering_eval.rows import row_strengths

# run(params, ids [B, T], mask [B, T], keys [B], rows: the batch's rows of the table) -> tokens and lengths
Run = Callable[[Any, Any, Any, Any, pd.DataFrame], GenerationOutput]


@dataclasses.dataclass(frozen=True)
class RowSteerer:
  """One method's steered generation: `start(concept_id or None)` returns the batch runner (with `per_concept`,
  once per concept, which may train first); `inputs(rows)`, if given, the model input text of each row in place
  of the instruction's chat prompt."""

  start: Callable[[int | None], Run]
  inputs: Callable[[pd.DataFrame], list[str]] | None = None
  per_concept: bool = False


def adapter_steerer(model: LoadedModel, dictionary: Dictionary, sampling: SamplingConfig, stops: Sequence[int],
                    pad_id: int) -> RowSteerer:
  """LoReFT or LoRA: each row's concept adapter from the dictionary's stack, gathered per row in the decode;
  RePS's (a preference method) scaled by the row's factor."""
  if method(dictionary.method).kind == "preference":
    edit, stack = preference_methods.adapter_stack(dictionary, model.config)
    adapters, factors = edit.adapters, lambda rows: rows["factor"].to_numpy(np.float32)
  else:
    (adapters, stack), factors = adapter_methods.adapters_of(dictionary, model.config), lambda rows: None

  def run(params, ids, mask, keys, rows):
    index = dictionary.rows_of(rows["concept_id"])
    return steer_generate(params, model.config, adapters, stack, index, ids, mask, keys, sampling, tuple(stops),
                          pad_id, factors(rows))

  return RowSteerer(lambda _: run)


def sae_clamp_steerer(model: LoadedModel, dictionary: Dictionary, layer: int, minimum: bool,
                      sampling: SamplingConfig, stops: Sequence[int], pad_id: int) -> RowSteerer:
  """An SAE method under AxBench's SAE clamping (or min-clamping): each row's feature activation set to (or
  raised to at least) factor * max_act at every token, the SAE's reconstruction error kept."""
  intervention = sae.sae_clamping(layer, minimum=minimum)
  extras = dictionary.extras

  def run(params, ids, mask, keys, rows):
    index = dictionary.rows_of(rows["concept_id"])
    feature = {"encoder": dictionary.weights[index], "bias": dictionary.biases[index],
               "threshold": extras["jump_threshold"][index], "vector": extras["steering_vector"][index],
               "factor": row_strengths(rows, dictionary)}
    return generate_tokens(params, model.config, ids, mask, keys, sampling, tuple(stops), pad_id, intervention,
                           feature)

  return RowSteerer(lambda _: run)


def prompt_steerer(model: LoadedModel, dictionary: Dictionary, sampling: SamplingConfig, stops: Sequence[int],
                   pad_id: int) -> RowSteerer:
  """PromptSteering: the unedited model answers `chat(" {prompt}\\n\\nQuestion: {instruction}")`."""
  prompts = dict(zip(dictionary.concept_ids, texts_of(dictionary.extras["prompt"])))

  def inputs(rows):
    return prompting.steered_inputs(model.tokenizer, [prompts[int(c)] for c in rows["concept_id"]],
                                    rows["instruction"].tolist())

  run = plain_run(model.config, sampling, stops, pad_id)
  return RowSteerer(lambda _: run, inputs)


def plain_run(config, sampling: SamplingConfig, stops: Sequence[int], pad_id: int) -> Run:
  """The unedited model's generation with whatever params it is given (SFT passes each concept's)."""
  def run(params, ids, mask, keys, rows):
    del rows
    return generate_tokens(params, config, ids, mask, keys, sampling, tuple(stops), pad_id)
  return run


def sft_steerer(model: LoadedModel, data, dictionary: Dictionary, sampling: SamplingConfig, stops: Sequence[int],
                pad_id: int, seed: int, training_dir: str, log: Callable[[str], None] | None = None,
                max_examples: int | None = None) -> RowSteerer:
  """SFT: per concept, the whole model fine-tuned on its positives from the base weights (kept unchanged in
  memory, so nothing is reloaded), then its rows generated; the loss record goes to training_dir/SFT/."""
  run = plain_run(model.config, sampling, stops, pad_id)

  def start(concept_id):
    examples = lm_examples(data, model.tokenizer, concept_ids=[concept_id], positions="all",
                           max_examples=max_examples)
    params, record = sft.train_sft(model, examples, 0, dictionary.hyperparameters, seed)
    atomic_files.write_parquet(os.path.join(training_dir, "SFT", f"{concept_id}.parquet"), pd.DataFrame(record))
    if log is not None:
      log(f"SFT: concept {concept_id} fine-tuned (final loss {float(np.asarray(record['loss'])[-1]):.4g})")
    return lambda _, ids, mask, keys, rows: run(params, ids, mask, keys, rows)

  return RowSteerer(start, per_concept=True)


def steerers(model: LoadedModel, data, dictionaries: Mapping[str, Dictionary], protocol, seed: int,
             training_dir: str, log: Callable[[str], None] | None = None, max_examples: int | None = None,
             layer: int | None = None) -> dict[str, RowSteerer]:
  """The `RowSteerer` of every steering method among `dictionaries` that does not add a vector (SFT trains on at
  most `max_examples` examples per concept, as the others; the SAE methods clamp at `layer` under a clamping
  `protocol.intervention`)."""
  tok = model.tokenizer
  pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
  sampling, stops = SamplingConfig(protocol.max_new_tokens, protocol.temperature), stop_token_ids(tok)
  out = {}
  for name, dictionary in dictionaries.items():
    spec = method(dictionary.method)
    if spec.name in sae_methods.METHODS and protocol.intervention != "addition":
      out[name] = sae_clamp_steerer(model, dictionary, layer, protocol.intervention == "min_clamping", sampling,
                                    stops, pad_id)
    if spec.kind == "preference" and dictionary.weights is None:  # RePS's LoReFT and LoRA
      out[name] = adapter_steerer(model, dictionary, sampling, stops, pad_id)
    if not spec.steers or spec.uses_factor:
      continue
    if spec.kind == "adapter":
      out[name] = adapter_steerer(model, dictionary, sampling, stops, pad_id)
    elif spec.kind == "prompt":
      out[name] = prompt_steerer(model, dictionary, sampling, stops, pad_id)
    else:
      out[name] = sft_steerer(model, data, dictionary, sampling, stops, pad_id, seed, training_dir, log,
                              max_examples)
  return out
