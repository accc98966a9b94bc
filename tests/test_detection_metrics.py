"""Detection metrics against hand-worked examples and independent numpy computations of AxBench's semantics."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from axjax.errors import AxjaxError
from axjax.evaluation import (detection_report, hard_negative_accuracy, imbalanced_f1, imbalanced_negatives,
                              max_f1_stats, roc_metrics, round_scores)

P, N, H = "positive", "negative", "hard negative"

# Hand-worked: positives .9 .7 .4, negatives .8 .2 .1, one hard negative .95 (the max, so it sets the scale).
HAND_SCORES = [0.9, 0.8, 0.7, 0.4, 0.2, 0.1, 0.95]
HAND_CATEGORIES = [P, N, P, P, N, N, H]


def normalised(scores, value):
  """value min-max normalised over all of a concept's scores, hard negatives included."""
  return (value - min(scores)) / (max(scores) - min(scores))


def test_roc_hand_worked():
  roc = roc_metrics(HAND_SCORES, HAND_CATEGORIES)
  assert roc.roc_auc == pytest.approx(7 / 9)  # 7 of the 9 positive-negative pairs are ordered right
  # Youden J = tpr - fpr peaks at 2/3 for "score >= .4"; the threshold is on the normalised scale
  assert roc.optimal_threshold == pytest.approx(normalised(HAND_SCORES, 0.4))
  assert roc.max_act == 0.95
  assert roc.fpr[0] == 0.0 and roc.tpr[0] == 0.0 and roc.fpr[-1] == 1.0 and roc.tpr[-1] == 1.0


def test_hard_negatives_are_excluded_from_auc():
  without_hard = roc_metrics(HAND_SCORES[:-1], HAND_CATEGORIES[:-1])
  misleading_hard = roc_metrics(HAND_SCORES + [0.99, 0.98], HAND_CATEGORIES + [H, H])
  assert without_hard.roc_auc == pytest.approx(7 / 9)
  assert misleading_hard.roc_auc == pytest.approx(7 / 9)
  assert misleading_hard.max_act == 0.99  # but they count in max_act and in the normalisation
  assert misleading_hard.optimal_threshold == pytest.approx(normalised(HAND_SCORES + [0.99], 0.4))


def test_youden_ties_go_to_the_highest_threshold():
  # "score >= .9" and "score >= .5" both give J = 1/2; sklearn's curve runs from high thresholds, argmax takes the first
  roc = roc_metrics([0.9, 0.5, 0.7, 0.1], [P, P, N, N])
  assert roc.roc_auc == pytest.approx(3 / 4)
  assert roc.optimal_threshold == pytest.approx(1.0)


def test_tied_scores_count_half_in_auc():
  assert roc_metrics([0.5, 0.5, 0.5, 0.2], [P, P, N, N]).roc_auc == pytest.approx(3 / 4)


def test_hard_negative_accuracy_hand_worked():
  roc = roc_metrics(HAND_SCORES, HAND_CATEGORIES)
  result = hard_negative_accuracy(HAND_SCORES, HAND_CATEGORIES, roc.optimal_threshold)
  assert result.positive_accuracy == 1.0  # all positives are >= .4
  assert result.hard_negative_accuracy == 0.0  # the hard negative .95 is detected
  assert result.macro_avg_accuracy == 0.5


def test_hard_negative_accuracy_is_none_where_axbench_reports_nothing():
  roc = roc_metrics(HAND_SCORES[:-1], HAND_CATEGORIES[:-1])
  assert hard_negative_accuracy(HAND_SCORES[:-1], HAND_CATEGORIES[:-1], roc.optimal_threshold) is None
  inverted = roc_metrics([0.1, 0.2, 0.8, 0.9, 0.5], [P, P, N, N, H])  # no threshold beats chance
  assert math.isinf(inverted.optimal_threshold)
  assert hard_negative_accuracy([0.1, 0.2, 0.8, 0.9, 0.5], [P, P, N, N, H], inverted.optimal_threshold) is None


def test_max_f1_hand_worked():
  f1 = max_f1_stats(HAND_SCORES, HAND_CATEGORIES)
  # on positives vs negatives F1 peaks at 6/7 for "score >= .4"
  assert f1.optimal_pr_threshold == pytest.approx(normalised(HAND_SCORES, 0.4))
  assert f1.optimal_roc_threshold == pytest.approx(normalised(HAND_SCORES, 0.4))
  # precision/recall/F1 over all rows with the hard negative as a 0: detected .95 .9 .8 .7 .4 -> tp 3, fp 2
  assert (f1.precision, f1.recall, f1.f1) == pytest.approx((0.6, 1.0, 0.75))
  assert (f1.positive_accuracy, f1.negative_accuracy, f1.hard_negative_accuracy) == pytest.approx((1.0, 2 / 3, 0.0))
  assert f1.macro_avg_accuracy == pytest.approx(5 / 9)
  assert f1.overall_accuracy == pytest.approx(5 / 7)
  assert (f1.max_act, f1.min_act) == (0.95, 0.1)


def test_max_f1_ties_go_to_the_lowest_threshold():
  # F1 = 2/3 both for "score >= .9" and "score >= .3"; the PR curve runs from low thresholds, argmax takes the first
  f1 = max_f1_stats([0.9, 0.3, 0.6, 0.5], [P, P, N, N])
  assert f1.optimal_pr_threshold == 0.0
  assert (f1.precision, f1.recall) == (0.5, 1.0)
  assert f1.optimal_roc_threshold == 1.0


def test_max_f1_without_hard_negatives_has_nan_class_accuracy():
  f1 = max_f1_stats(HAND_SCORES[:-1], HAND_CATEGORIES[:-1])
  assert math.isnan(f1.hard_negative_accuracy) and math.isnan(f1.macro_avg_accuracy)
  assert f1.f1 == pytest.approx(6 / 7)


def test_equal_scores_normalise_to_zero():
  roc = roc_metrics([2.0, 2.0, 2.0], [P, N, N])
  assert roc.roc_auc == 0.5 and roc.max_act == 2.0
  assert max_f1_stats([2.0, 2.0, 2.0], [P, N, N]).optimal_pr_threshold == 0.0


def random_concept(rng, ties=False):
  n_pos, n_neg, n_hard = rng.integers(2, 40, size=3)
  categories = np.array([P] * n_pos + [N] * n_neg + [H] * n_hard)[rng.permutation(n_pos + n_neg + n_hard)]
  if ties:
    return rng.integers(0, 5, size=categories.size).astype(float), categories
  return rng.normal(size=categories.size) + 1.5 * (categories == P) + (categories == H), categories


def reference_metrics(scores, categories):
  """AUC, and the sets of Youden-optimal and F1-optimal thresholds, by brute force over the normalised scores.

  The sets hold every distinct score of a positive or negative row whose J (or F1) is within 1e-12 of the best:
  mathematically tied points can differ in the last bit, and then AxBench takes the float argmax.
  """
  x = (scores - scores.min()) / (scores.max() - scores.min())
  pos, neg = x[categories == P], x[categories == N]
  auc = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
  candidates = np.unique(np.concatenate([pos, neg]))
  tp = np.array([(pos >= t).sum() for t in candidates])
  fp = np.array([(neg >= t).sum() for t in candidates])
  youden = tp / pos.size - fp / neg.size
  f1 = 2 * tp / (2 * tp + fp + (pos.size - tp))
  youden_best = set(candidates[youden >= youden.max() - 1e-12]) if youden.max() > 1e-12 else {math.inf}
  return x, auc, youden_best, set(candidates[f1 >= f1.max() - 1e-12])


@pytest.mark.parametrize("ties", [False, True])
def test_random_concepts_against_brute_force(ties):
  rng = np.random.default_rng(1 + ties)
  for _ in range(100):
    scores, categories = random_concept(rng, ties)
    x, auc, youden_thresholds, f1_thresholds = reference_metrics(scores, categories)
    roc = roc_metrics(scores, categories)
    assert roc.roc_auc == pytest.approx(auc, abs=1e-12)
    assert roc.optimal_threshold in youden_thresholds
    f1 = max_f1_stats(scores, categories)
    assert f1.optimal_pr_threshold in f1_thresholds and f1.optimal_roc_threshold == roc.optimal_threshold
    detected, labels = x >= f1.optimal_pr_threshold, categories == P
    tp, fp, fn = (detected & labels).sum(), (detected & ~labels).sum(), (~detected & labels).sum()
    assert f1.precision == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
    assert f1.recall == pytest.approx(tp / (tp + fn))
    assert f1.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert f1.hard_negative_accuracy == pytest.approx((~detected[categories == H]).mean())
    hard = hard_negative_accuracy(scores, categories, roc.optimal_threshold)
    if math.isinf(roc.optimal_threshold):
      assert hard is None
    else:
      detected = x >= roc.optimal_threshold
      assert hard.positive_accuracy == pytest.approx(detected[categories == P].mean())
      assert hard.hard_negative_accuracy == pytest.approx((~detected[categories == H]).mean())


def test_imbalanced_pool_matches_pandas_sample_and_is_deterministic():
  rng = np.random.default_rng(3)
  categories = rng.choice([P, N, H], size=3000, p=[0.4, 0.5, 0.1])
  pool = imbalanced_negatives(categories, num_examples=12, factor=100, seed=42)
  table = pd.DataFrame({"category": categories})
  expected = table[table["category"] == N].sample(1200, random_state=42).index.to_numpy()
  np.testing.assert_array_equal(pool, expected)
  assert pool.size == 1200 and np.unique(pool).size == 1200 and (categories[pool] == N).all()
  np.testing.assert_array_equal(pool, imbalanced_negatives(categories, num_examples=12, factor=100, seed=42))
  assert not np.array_equal(pool, imbalanced_negatives(categories, num_examples=12, factor=100, seed=7))


def test_imbalanced_pool_larger_than_the_negatives_is_refused():
  message = r"^the imbalanced pool needs 3600 negatives \(36 x 100\) but the eval table has 2$"
  with pytest.raises(AxjaxError, match=message):
    imbalanced_negatives([P, N, N, H])


def test_imbalanced_f1_hand_worked():
  # own rows: positives .9 .8, negative .1, hard negative .95; the pool adds negatives .85 .2 0
  f1 = imbalanced_f1([0.9, 0.8, 0.1, 0.95], [P, P, N, H], [0.85, 0.2, 0.0])
  assert f1.optimal_pr_threshold == pytest.approx(0.8 / 0.95)  # F1 4/5 at "score >= .8" on pos vs all negatives
  assert (f1.precision, f1.recall, f1.f1) == pytest.approx((0.5, 1.0, 2 / 3))  # .95 (hard) and .85 (pool) detected
  assert f1.negative_accuracy == pytest.approx(3 / 4)


def test_round_scores_is_pythons_round_and_commutes_with_max():
  values = np.random.default_rng(4).normal(size=(500, 7)).astype(np.float32) * 50
  rounded = round_scores(values)
  assert rounded.ravel().tolist() == [round(v, 3) for v in values.ravel().tolist()]
  np.testing.assert_array_equal(round_scores(rounded), rounded)
  np.testing.assert_array_equal(round_scores(values.max(axis=1)), rounded.max(axis=1))


def eval_table(rng):
  """Three concepts' eval rows (concept 5 without hard negatives) scored by all three concepts' columns."""
  concepts, categories = [], []
  for concept, n_hard in ((3, 4), (5, 0), (9, 2)):
    concepts += [concept] * (20 + 30 + n_hard)
    categories += [P] * 20 + [N] * 30 + [H] * n_hard
  concepts, categories = np.array(concepts), np.array(categories)
  scores = rng.normal(size=(concepts.size, 3)) + 2.0 * (categories == P)[:, None]
  return scores, concepts, categories


def test_detection_report_evaluates_each_concept_on_its_own_rows_and_column():
  scores, concepts, categories = eval_table(np.random.default_rng(5))
  report = detection_report(scores, concepts, categories, [3, 5, 9], num_examples=1, imbalance_factor=50, seed=0)
  json.dumps(report, allow_nan=False)  # plain JSON
  assert [entry["concept_id"] for entry in report["concepts"]] == [3, 5, 9]
  pool = imbalanced_negatives(categories, 1, 50, 0)
  assert report["settings"]["pool_size"] == 50
  for column, (concept, entry) in enumerate(zip((3, 5, 9), report["concepts"])):
    rows = concepts == concept
    own = round_scores(scores[rows, column])
    assert entry["roc"]["roc_auc"] == roc_metrics(own, categories[rows]).roc_auc
    assert entry["roc"]["fpr"] == list(roc_metrics(own, categories[rows]).fpr)
    assert entry["f1"]["f1"] == max_f1_stats(own, categories[rows]).f1
    pool_scores = round_scores(scores[pool, column])
    assert entry["imbalanced_f1"]["f1"] == imbalanced_f1(own, categories[rows], pool_scores).f1
  assert report["concepts"][1]["hard_negative"] is None
  assert report["concepts"][1]["f1"]["hard_negative_accuracy"] is None
  aucs = [entry["roc"]["roc_auc"] for entry in report["concepts"]]
  assert report["mean"]["roc"]["roc_auc"] == pytest.approx(np.mean(aucs))
  macros = [report["concepts"][i]["hard_negative"]["macro_avg_accuracy"] for i in (0, 2)]
  assert report["mean"]["hard_negative"]["macro_avg_accuracy"] == pytest.approx(np.mean(macros))
  assert report["mean"]["hard_negative"]["num_concepts"] == 2 and report["mean"]["num_concepts"] == 3


def test_detection_report_ignores_other_concepts_rows_and_rounds_scores():
  scores, concepts, categories = eval_table(np.random.default_rng(6))
  scores[np.flatnonzero(concepts == 3)[0], 0] = 7.12345
  base = detection_report(scores, concepts, categories, [3, 5, 9], imbalance_factor=None)
  assert base["concepts"][0]["roc"]["max_act"] == 7.123
  scores[concepts != 3, 0] = 1e6  # concept 3's column on other concepts' rows
  changed = detection_report(scores, concepts, categories, [3, 5, 9], imbalance_factor=None)
  assert changed["concepts"][0] == base["concepts"][0]
  assert "imbalanced_f1" not in changed["concepts"][0] and changed["settings"]["pool_size"] == 0


def test_concept_without_positives_or_negatives_is_named():
  scores, concepts, categories = eval_table(np.random.default_rng(7))
  categories[(concepts == 9) & (categories == P)] = N
  with pytest.raises(AxjaxError, match=r"^there are no positive eval rows for concept 9, so its detection metrics"):
    detection_report(scores, concepts, categories, [3, 5, 9], imbalance_factor=None)
  with pytest.raises(AxjaxError, match=r"^there are no negative eval rows for concept 4,"):
    roc_metrics([0.1, 0.2], [P, H], concept=4)
  with pytest.raises(AxjaxError, match=r"^there are no positive eval rows for concept 12,"):
    detection_report(scores, concepts, categories, [3, 5, 12], imbalance_factor=None)


@pytest.mark.parametrize("call, message", [
    (lambda: roc_metrics([0.1, 0.2, 0.3], [P, N]), r"must be 1-D of one length, got shapes \(3,\) and \(2,\)"),
    (lambda: max_f1_stats([0.1, np.nan], [P, N]), r"scores of this concept contain 1 non-finite values"),
    (lambda: roc_metrics([0.1, 0.2], [P, "neutral"]), r"categories of this concept include \['neutral'\]"),
    (lambda: imbalanced_f1([0.1, 0.2], [P, N], [[0.1]]), r"pool_scores must be 1-D"),
    (lambda: detection_report(np.zeros((3, 2)), [0, 0, 0], [P, N, N], [0]), r"with 1 concept columns, got shape"),
    (lambda: detection_report(np.zeros((3, 1)), [0, 0], [P, N, N], [0]), r"scores has 3 rows but row_concepts has 2"),
    (lambda: detection_report(np.zeros((3, 2)), [0, 0, 0], [P, N, N], [0, 0]), r"concept_ids has duplicates"),
])
def test_bad_input_raises_one_sentence(call, message):
  with pytest.raises(AxjaxError, match=message):
    call()
