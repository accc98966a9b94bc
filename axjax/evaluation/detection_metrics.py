"""Concept-detection metrics from example scores, computed per concept exactly as AxBench's latent evaluators do.

An example's score is its max per-token score (non-prefix tokens), rounded to 3 decimals. Per concept, AxBench
min-max normalises the scores of all the concept's eval rows (hard negatives included), then reports:
- ROC AUC and the Youden-J threshold, positives vs negatives, hard negatives dropped (`AUCROCEvaluator`);
- positive and hard-negative accuracy at that threshold (`HardNegativeEvaluator`);
- precision, recall and F1 at the max-F1 point of the positive-vs-negative PR curve (`LatentStatsEvaluator`),
  also with a shared pool of upsampled negatives added: the imbalanced setting, 100 negatives per positive.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

from axjax.errors import AxjaxError

POSITIVE, NEGATIVE, HARD_NEGATIVE = "positive", "negative", "hard negative"
CATEGORIES = (POSITIVE, NEGATIVE, HARD_NEGATIVE)
SCORE_DECIMALS = 3  # AxBench rounds every token score to 3 decimals (Python's round) before the max
AXBENCH_NUM_EXAMPLES = 36  # positives per concept in AxBench's eval data (latent_num_of_examples)
AXBENCH_IMBALANCE_FACTOR = 100
AXBENCH_SEED = 42  # DatasetFactory's seed, never overridden at inference


@dataclasses.dataclass(frozen=True)
class RocResult:
  """AUCROCEvaluator's numbers: the ROC curve and Youden-J threshold on normalised scores, and the raw max."""

  roc_auc: float
  optimal_threshold: float  # on min-max normalised scores; inf when no threshold beats chance
  fpr: tuple[float, ...]
  tpr: tuple[float, ...]
  max_act: float  # max raw score over all the concept's rows


@dataclasses.dataclass(frozen=True)
class HardNegativeResult:
  """HardNegativeEvaluator's numbers: accuracies at the Youden-J threshold (AxBench reports only the macro)."""

  positive_accuracy: float
  hard_negative_accuracy: float
  macro_avg_accuracy: float


@dataclasses.dataclass(frozen=True)
class F1Result:
  """LatentStatsEvaluator's numbers at the max-F1 threshold of the PR curve; nan where a category is absent."""

  optimal_pr_threshold: float  # on min-max normalised scores
  optimal_roc_threshold: float
  precision: float  # precision, recall, F1 and overall accuracy over all rows, hard negatives labelled 0
  recall: float
  f1: float
  positive_accuracy: float
  negative_accuracy: float
  hard_negative_accuracy: float
  macro_avg_accuracy: float  # mean of the three accuracies (AxBench's macro_avg_accuracy_fixed)
  overall_accuracy: float
  max_act: float
  min_act: float


def round_scores(scores: Any) -> np.ndarray:
  """Scores rounded to 3 decimals with Python's round, as AxBench does (idempotent, and max commutes with it)."""
  values = np.asarray(scores, dtype=np.float64)
  rounded = [round(v, SCORE_DECIMALS) for v in values.ravel().tolist()]
  return np.asarray(rounded, dtype=np.float64).reshape(values.shape)


def roc_metrics(scores: Any, categories: Any, concept: Any = None) -> RocResult:
  """ROC AUC and Youden-J threshold of one concept's eval rows, positives vs negatives."""
  scores, categories = _checked(scores, categories, concept)
  normalised = _normalise(scores)
  kept = categories != HARD_NEGATIVE
  fpr, tpr, threshold = _youden(categories[kept] == POSITIVE, normalised[kept])
  return RocResult(roc_auc=float(skm.auc(fpr, tpr)), optimal_threshold=threshold, fpr=tuple(fpr.tolist()),
                   tpr=tuple(tpr.tolist()), max_act=float(scores.max()))


def hard_negative_accuracy(scores: Any, categories: Any, threshold: float,
                           concept: Any = None) -> HardNegativeResult | None:
  """Accuracy on positives and hard negatives at `threshold` (normalised, as RocResult's); None as AxBench's {}.

  AxBench reports nothing for a concept without hard negatives or whose threshold is infinite.
  """
  scores, categories = _checked(scores, categories, concept)
  hard = categories == HARD_NEGATIVE
  if math.isinf(threshold) or not hard.any():
    return None
  detected = _normalise(scores) >= threshold
  positive, hard_negative = float(detected[categories == POSITIVE].mean()), float((~detected[hard]).mean())
  return HardNegativeResult(positive, hard_negative, float(np.mean([positive, hard_negative])))


def max_f1_stats(scores: Any, categories: Any, concept: Any = None) -> F1Result:
  """Statistics of one concept's eval rows at the max-F1 threshold of the positive-vs-negative PR curve."""
  scores, categories = _checked(scores, categories, concept)
  normalised = _normalise(scores)
  kept = categories != HARD_NEGATIVE
  labels = categories == POSITIVE
  _, _, roc_threshold = _youden(labels[kept], normalised[kept])
  precisions, recalls, thresholds = skm.precision_recall_curve(labels[kept].astype(int), normalised[kept])
  f1s = np.zeros_like(precisions)
  defined = (precisions + recalls) > 0
  f1s[defined] = 2 * (precisions[defined] * recalls[defined]) / (precisions[defined] + recalls[defined])
  threshold = float(thresholds[np.argmax(f1s)])
  detected = normalised >= threshold
  accuracies = [_accuracy(detected, labels, categories == category) for category in CATEGORIES]
  true_positives, predicted, actual = int((detected & labels).sum()), int(detected.sum()), int(labels.sum())
  precision, recall, f1 = (_ratio(true_positives, predicted), _ratio(true_positives, actual),
                           _ratio(2 * true_positives, actual + predicted))
  return F1Result(optimal_pr_threshold=threshold, optimal_roc_threshold=roc_threshold, precision=precision,
                  recall=recall, f1=f1, positive_accuracy=accuracies[0], negative_accuracy=accuracies[1],
                  hard_negative_accuracy=accuracies[2], macro_avg_accuracy=float(np.mean(accuracies)),
                  overall_accuracy=float((detected == labels).mean()), max_act=float(scores.max()),
                  min_act=float(scores.min()))


def imbalanced_negatives(categories: Any, num_examples: int = AXBENCH_NUM_EXAMPLES,
                         factor: int = AXBENCH_IMBALANCE_FACTOR, seed: int = AXBENCH_SEED) -> np.ndarray:
  """Row positions of the shared imbalanced pool: int(num_examples * factor) negatives drawn from all concepts.

  Draws the rows that AxBench's `negatives.sample(n, random_state=seed)` draws from the same eval table.
  """
  negatives = np.flatnonzero(np.asarray(categories).astype(str) == NEGATIVE)
  size = int(num_examples * factor)
  if not 0 < size <= negatives.size:
    raise AxjaxError(f"the imbalanced pool needs {size} negatives ({num_examples} x {factor}) but the eval table "
                     f"has {negatives.size}")
  return negatives[np.random.RandomState(seed).choice(negatives.size, size=size, replace=False)]


def imbalanced_f1(scores: Any, categories: Any, pool_scores: Any, concept: Any = None) -> F1Result:
  """max_f1_stats of one concept's eval rows with the shared pool (scored by this concept) added as negatives."""
  pool_scores = np.asarray(pool_scores, dtype=np.float64)
  if pool_scores.ndim != 1:
    raise AxjaxError(f"pool_scores must be 1-D (one score per pool row), got shape {pool_scores.shape}")
  scores, categories = _checked(scores, categories, concept)
  return max_f1_stats(np.concatenate([scores, pool_scores]),
                      np.concatenate([categories, np.full(pool_scores.size, NEGATIVE)]), concept)


def detection_report(scores: Any, row_concepts: Any, categories: Any, concept_ids: Sequence[Any], *,
                     num_examples: int = AXBENCH_NUM_EXAMPLES, imbalance_factor: int | None = AXBENCH_IMBALANCE_FACTOR,
                     seed: int = AXBENCH_SEED) -> dict[str, Any]:
  """All detection metrics of every concept and their means, as plain JSON-ready data (None for nan and inf).

  `scores` is [E, C]: every eval row scored by every concept (column j is concept_ids[j]); each concept is
  evaluated on its own rows (row_concepts == its id) and, with imbalance_factor set, on the shared pool too.
  """
  scores = np.asarray(scores)
  row_concepts, categories = np.asarray(row_concepts), np.asarray(categories).astype(str)
  concept_ids = list(concept_ids)
  if scores.ndim != 2 or scores.shape[1] != len(concept_ids):
    raise AxjaxError(f"scores must be [rows, concepts] with {len(concept_ids)} concept columns, got shape "
                     f"{scores.shape}")
  if not scores.shape[0] == row_concepts.shape[0] == categories.shape[0]:
    raise AxjaxError(f"scores has {scores.shape[0]} rows but row_concepts has {row_concepts.shape[0]} and "
                     f"categories {categories.shape[0]}")
  if len(set(concept_ids)) != len(concept_ids):
    raise AxjaxError("concept_ids has duplicates: each score column must belong to one concept")
  pool, pool_scores = None, None
  if imbalance_factor is not None:
    pool = imbalanced_negatives(categories, num_examples, imbalance_factor, seed)
    pool_scores = round_scores(scores[pool])
  entries = []
  for column, concept in enumerate(concept_ids):
    rows = row_concepts == concept
    own, own_categories = round_scores(scores[rows, column]), categories[rows]
    roc = roc_metrics(own, own_categories, concept)
    hard = hard_negative_accuracy(own, own_categories, roc.optimal_threshold, concept)
    entry = {"concept_id": _plain(concept), "roc": _plain(roc), "hard_negative": _plain(hard),
             "f1": _plain(max_f1_stats(own, own_categories, concept))}
    if pool_scores is not None:
      entry["imbalanced_f1"] = _plain(imbalanced_f1(own, own_categories, pool_scores[:, column], concept))
    entries.append(entry)
  settings = {"num_examples": num_examples, "imbalance_factor": imbalance_factor, "seed": seed,
              "pool_size": 0 if pool is None else int(pool.size)}
  return {"concepts": entries, "mean": _means(entries), "settings": settings}


def _checked(scores: Any, categories: Any, concept: Any) -> tuple[np.ndarray, np.ndarray]:
  """One concept's scores (float64) and categories (str), or one sentence on what is wrong with them."""
  subject = "this concept" if concept is None else f"concept {concept}"
  scores, categories = np.asarray(scores, dtype=np.float64), np.asarray(categories).astype(str)
  if scores.ndim != 1 or scores.shape != categories.shape:
    raise AxjaxError(f"scores and categories of {subject} must be 1-D of one length, got shapes {scores.shape} "
                     f"and {categories.shape}")
  if not np.isfinite(scores).all():
    raise AxjaxError(f"scores of {subject} contain {int((~np.isfinite(scores)).sum())} non-finite values")
  unknown = sorted(set(categories.tolist()) - set(CATEGORIES))
  if unknown:
    raise AxjaxError(f"categories of {subject} include {unknown}: expected 'positive', 'negative' or "
                     f"'hard negative'")
  for needed in (POSITIVE, NEGATIVE):
    if not (categories == needed).any():
      raise AxjaxError(f"there are no {needed} eval rows for {subject}, so its detection metrics are undefined")
  return scores, categories


def _normalise(scores: np.ndarray) -> np.ndarray:
  """Min-max normalised scores as AxBench computes them; all 0 when the scores are all equal (0/0 filled)."""
  low, high = scores.min(), scores.max()
  with np.errstate(invalid="ignore", divide="ignore"):
    normalised = (scores - low) / (high - low)
  return np.where(np.isnan(normalised), 0.0, normalised)


def _youden(labels: np.ndarray, normalised: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """sklearn's ROC curve and the threshold of its first point of maximal tpr - fpr (inf if that is the origin)."""
  fpr, tpr, thresholds = skm.roc_curve(labels.astype(int), normalised)
  return fpr, tpr, float(thresholds[np.argmax(tpr - fpr)])


def _accuracy(detected: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float:
  """Share of `rows` whose detection matches the label; nan for no rows."""
  return float((detected[rows] == labels[rows]).mean()) if rows.any() else math.nan


def _ratio(numerator: int, denominator: int) -> float:
  """numerator / denominator, 0 for 0/0: sklearn's binary precision, recall and F1 with zero_division=0."""
  return numerator / denominator if denominator else 0.0


def _plain(value: Any) -> Any:
  """JSON-ready copy: dataclasses to dicts, tuples to lists, numpy scalars to Python, nan and inf to None."""
  if dataclasses.is_dataclass(value):
    return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
  if isinstance(value, tuple):
    return [_plain(item) for item in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, (int, np.integer)):
    return int(value)
  return value


def _means(entries: list[dict[str, Any]]) -> dict[str, Any]:
  """Per section, the mean of each scalar metric over the concepts where it is defined (as AxBench's plots)."""
  means: dict[str, Any] = {"num_concepts": len(entries)}
  for section in ("roc", "hard_negative", "f1", "imbalanced_f1"):
    results = [entry[section] for entry in entries if entry.get(section) is not None]
    if not results:
      continue
    names = [name for name, value in results[0].items() if not isinstance(value, list)]
    means[section] = {name: _mean([result[name] for result in results]) for name in names}
    means[section]["num_concepts"] = len(results)
  return means


def _mean(values: list[Any]) -> float | None:
  """Mean of the values that are not None; None if none are."""
  defined = [value for value in values if value is not None]
  return float(np.mean(defined)) if defined else None
