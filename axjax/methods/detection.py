"""Concept detection with dictionaries: score every eval example with every concept, then AxBench's metrics."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np

from axjax.data.axbench_format import AxbenchData
from axjax.data.examples import latent_eval_examples
from axjax.dictionary import Dictionary
from axjax.evaluation.detection_metrics import AXBENCH_NUM_EXAMPLES, detection_report, round_scores
from axjax.loading.load import LoadedModel
from axjax.methods import attribution, bow, prompting
from axjax.methods.registry import method
from axjax.methods.scoring import example_max_scores


def imbalance_factor_for(categories, wanted: int | None) -> int | None:
  """AxBench's imbalance factor (100), capped at what the eval set's negatives can supply without repeats."""
  if wanted is None:
    return None
  available = int(np.sum(np.asarray(categories) == "negative")) // AXBENCH_NUM_EXAMPLES
  return min(wanted, available) or None


def _report(dictionary: Dictionary, scores: np.ndarray, ex, imbalance_factor: int | None
            ) -> tuple[dict[str, Any], Dictionary]:
  """Detection report of one dictionary from its [rows, C] scores, and the dictionary with per-concept max
  activation and threshold."""
  report = detection_report(scores, ex.concept_ids, ex.categories, dictionary.concept_ids,
                            imbalance_factor=imbalance_factor_for(ex.categories, imbalance_factor))
  max_acts, thresholds = [], []
  for column, concept in enumerate(dictionary.concept_ids):
    own = round_scores(scores[ex.concept_ids == concept, column])
    lo, hi = float(own.min()), float(own.max())
    normalised = report["concepts"][column]["roc"]["optimal_threshold"]
    max_acts.append(hi)
    thresholds.append(np.nan if normalised is None else lo + normalised * (hi - lo))
  return report, dictionary.replace(max_activations=np.array(max_acts), thresholds=np.array(thresholds))


# Example scores [E, C] of the detecting kinds other than "direction", and whether they cover the imbalanced
# pool (every row under every concept) or only each concept's own rows.
KIND_SCORES = {"bow": bow.detection_scores, "attribution": attribution.detection_scores,
               "prompt": prompting.detection_scores}


def evaluate_detection(dictionaries: Mapping[str, Dictionary], model: LoadedModel, data: AxbenchData, layer: int,
                       imbalance_factor: int | None = 100, progress: Callable[[str, int, int], None] | None = None,
                       mesh: jax.sharding.Mesh | None = None, params=None, seed: int = 0,
                       scratch_dir: str | None = None,
                       on_report: Callable[[str, dict[str, Any], Dictionary], None] | None = None
                       ) -> dict[str, tuple[dict[str, Any], Dictionary]]:
  """Detection report of each dictionary, and the dictionary with per-concept max activation and threshold.

  One pass of the model over the latent-eval texts scores every concept of every rank-1 dictionary at once (its
  batches split over `mesh`'s concept axis; `params`: the model's weights already placed on it); the other
  kinds score with their own `KIND_SCORES` (BoW, IG/IxG and PromptDetection: their imbalanced F1 only where
  they score the shared pool). `scratch_dir`: where the slow kinds (IG) keep their scores so far, to resume;
  `on_report(name, report, dictionary)` runs as each report is made (a slow kind's before the next kind starts),
  so a caller can write it at once.
  max activation: the concept's largest example score on its eval rows (what AxBench scales steering by);
  threshold: the Youden-J point of its ROC curve, mapped back from AxBench's min-max scale to raw scores.
  """
  if not dictionaries:
    return {}  # nothing detects: a folder without latent-eval data is fine
  ex = latent_eval_examples(data, model.tokenizer)
  out = {}

  def made(name: str, result: tuple[dict[str, Any], Dictionary]) -> None:
    out[name] = result
    if on_report is not None:
      on_report(name, *result)

  for name, dictionary in dictionaries.items():
    kind = method(dictionary.method).kind
    if kind != "direction":
      scratch = None if scratch_dir is None else os.path.join(scratch_dir, f"{name}.npz")
      scores, pooled = KIND_SCORES[kind](dictionary, model, ex, layer, data=data, seed=seed, mesh=mesh,
                                         params=params, progress=progress, scratch=scratch)
      made(name, _report(dictionary, scores, ex, imbalance_factor if pooled else None))
  names = [n for n in dictionaries if n not in out]
  if not names:
    return {n: out[n] for n in dictionaries}
  stack = lambda field: np.concatenate([np.asarray(getattr(dictionaries[n], field), np.float32) for n in names])
  relu = np.concatenate([np.full(dictionaries[n].num_concepts, method(dictionaries[n].method).relu_score)
                         for n in names])
  floors = np.concatenate([dictionaries[n].extras.get("jump_threshold", np.zeros(dictionaries[n].num_concepts))
                           for n in names])  # an SAE feature's JumpReLU threshold; ReLU scores cut at 0
  report = None if progress is None else functools.partial(progress, "detection scores", total=len(ex.tokens))
  scores = example_max_scores(model.params if params is None else params, model.config, ex.tokens,
                              ex.attention_mask, ex.score_mask, layer, stack("weights"), stack("biases"), relu,
                              floors, progress=report, mesh=mesh)
  bounds = np.cumsum([0] + [dictionaries[n].num_concepts for n in names])
  for i, n in enumerate(names):
    made(n, _report(dictionaries[n], scores[:, bounds[i]:bounds[i + 1]], ex, imbalance_factor))
  return {n: out[n] for n in dictionaries}
