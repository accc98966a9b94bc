"""Concept detection with a dictionary: score every eval example with every concept, then AxBench's metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

from axjax.dictionary import Dictionary
from axjax.evaluation.detection_metrics import AXBENCH_NUM_EXAMPLES, detection_report, round_scores
from axjax.methods.fit import ActivationCache
from axjax.methods.registry import method
from axjax.methods.scoring import example_max_scores


def imbalance_factor_for(categories, wanted: int | None) -> int | None:
  """AxBench's imbalance factor (100), capped at what the eval set's negatives can supply without repeats."""
  if wanted is None:
    return None
  available = int(np.sum(np.asarray(categories) == "negative")) // AXBENCH_NUM_EXAMPLES
  return min(wanted, available) or None


def evaluate_detection(dictionary: Dictionary, cache: ActivationCache, imbalance_factor: int | None = 100
                       ) -> tuple[dict[str, Any], Dictionary]:
  """Detection report of a dictionary, and the dictionary with per-concept max activation and threshold.

  max activation: the concept's largest example score on its eval rows (what AxBench scales steering by);
  threshold: the Youden-J point of its ROC curve, mapped back from AxBench's min-max scale to raw scores.
  """
  ex, acts = cache.examples("eval")
  spec = method(dictionary.method)
  scores = example_max_scores(acts, ex.score_mask, dictionary.weights, dictionary.biases, spec.relu_score)
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
