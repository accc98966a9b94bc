"""Steering scores against hand-worked tables: harmonic mean, factor selection, held-out means, CIs and winrates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from axjax.errors import AxjaxError
from axjax.steering_eval.scores import (factor_curves, harmonic_score, heldout_scores, mean_factor_curves, method_summary,
                                   select_factors, winrates)

NAMES = {1: "cats", 2: "rain"}
SPLIT = {0: "select", 1: "select", 2: "test", 3: "test"}

# Steer's ratings per concept and factor for instructions 0..3 (0, 1 select; 2, 3 test); scores in the comments.
STEER = {
    1: {0.5: [(1, 1, 1), (0, 2, 2), (2, 2, 2), (2, 2, 2)],  # select 1, 0 -> .5; test 2, 2 (the trap: best on test)
        1.0: [(2, 2, 2), (1, 1, 1), (1, 2, 2), (1, 1, 2)],  # select 2, 1 -> 1.5; test 1.5, 1.2 -> 1.35
        2.0: [(1, 2, 2), (1, 2, 2), (0, 1, 1), (1, 1, 1)]},  # select 1.5, 1.5 -> 1.5 (tie: 1.0 wins); test .5
    2: {0.5: [(2, 2, 2), (2, 2, 2), (1, 1, 1), (0, 0, 0)],  # select 2 -> chosen; test 1, 0 -> .5
        1.0: [(1, 1, 1), (1, 1, 1), (2, 2, 2), (2, 2, 2)],
        2.0: [(0, 0, 0), (0, 0, 0), (2, 2, 2), (2, 2, 2)]},
}
# Prompt (no factor): concept 1 has all four instructions, concept 2 only the test ones.
PROMPT = {1: {0: (2, 2, 2), 1: (1, 1, 1), 2: (1, 1, 1), 3: (1, 2, 2)},  # select 2, 1 -> 1.5; test 1, 1.5 -> 1.25
          2: {2: (2, 2, 2), 3: (1, 1, 1)}}  # test 2, 1 -> 1.5


def row(method, concept_id, factor, instruction_id, ratings, perplexity):
  return {"method": method, "concept_id": concept_id, "concept": NAMES[concept_id], "factor": factor,
          "instruction_id": instruction_id, "instruction": f"instruction {instruction_id}",
          "split": SPLIT[instruction_id], "generation": "text", "concept_rating": ratings[0],
          "instruction_rating": ratings[1], "fluency_rating": ratings[2], "perplexity": perplexity}


def hand_table() -> pd.DataFrame:
  """Steer and Prompt rows, shuffled so that no result depends on row order (factors out of order too)."""
  rows = [row("Steer", concept_id, factor, instruction_id, ratings, 10 * factor + instruction_id)
          for concept_id, by_factor in STEER.items() for factor, per_instruction in by_factor.items()
          for instruction_id, ratings in enumerate(per_instruction)]
  rows += [row("Prompt", concept_id, math.nan, instruction_id, ratings, math.nan)
           for concept_id, by_instruction in PROMPT.items() for instruction_id, ratings in by_instruction.items()]
  order = np.random.default_rng(3).permutation(len(rows))
  return pd.DataFrame([rows[index] for index in order])


def test_harmonic_mean_known_cases():
  ratings = [(2, 2, 2), (1, 1, 1), (1, 2, 2), (1, 1, 2), (2, 1, 1), (0, 2, 2), (2, 0, 2), (2, 2, 0), (0, 0, 0)]
  assert harmonic_score(ratings).tolist() == [2.0, 1.0, 1.5, 1.2, 1.2, 0.0, 0.0, 0.0, 0.0]
  assert harmonic_score(np.zeros((0, 3))).shape == (0,)


def test_factor_curves_means_and_counts():
  curves = factor_curves(hand_table())
  assert len(curves) == 2 * 3 * 2 + 3  # Steer: 2 concepts x 3 factors x 2 splits; Prompt: 3 (concept, split)
  point = curves[(curves.method == "Steer") & (curves.concept_id == 1) & (curves.split == "test")
                 & (curves.factor == 1.0)].iloc[0]
  assert (point.score, point.concept_rating, point.instruction_rating, point.fluency_rating) == (1.35, 1.0, 1.5, 2.0)
  assert (point.perplexity, point["count"]) == (12.5, 2)
  prompt = curves[curves.method == "Prompt"]
  assert prompt.factor.isna().all() and prompt.score.tolist() == [1.5, 1.25, 1.5]


def test_selection_picks_best_select_factor_and_smallest_on_tie():
  selection = select_factors(hand_table())
  assert selection.columns.tolist() == ["method", "concept_id", "factor", "select_score"]
  steer = selection[selection.method == "Steer"]
  assert steer.factor.tolist() == [1.0, 0.5]  # concept 1: 1.0 ties 2.0 at 1.5; concept 2: 0.5 (2.0)
  assert steer.select_score.tolist() == [1.5, 2.0]
  prompt = selection[selection.method == "Prompt"]
  assert prompt.factor.isna().all()
  assert prompt.select_score.iloc[0] == 1.5 and math.isnan(prompt.select_score.iloc[1])  # no select rows


def test_heldout_uses_only_test_rows_at_the_selected_factor():
  df = hand_table()
  heldout = heldout_scores(df, select_factors(df)).set_index(["method", "concept_id"])
  steer = heldout.loc["Steer"]
  assert steer.score.tolist() == [1.35, 0.5]  # not the 2.0 that factor 0.5 scores on concept 1's test rows
  assert steer.factor.tolist() == [1.0, 0.5]
  assert steer.concept.tolist() == ["cats", "rain"]
  assert steer.perplexity.tolist() == [12.5, 7.5]
  assert steer["count"].tolist() == [2, 2]
  assert steer.concept_rating.tolist() == [1.0, 0.5]


def test_heldout_factorless_method_uses_all_its_test_rows():
  df = hand_table()
  prompt = heldout_scores(df, select_factors(df)).set_index(["method", "concept_id"]).loc["Prompt"]
  assert prompt.score.tolist() == [1.25, 1.5]
  assert prompt.factor.isna().all() and prompt.perplexity.isna().all()
  assert prompt["count"].tolist() == [2, 2]


def test_heldout_honours_a_given_selection():
  df = hand_table()
  selection = select_factors(df)
  selection.loc[(selection.method == "Steer") & (selection.concept_id == 1), "factor"] = 0.5
  heldout = heldout_scores(df, selection).set_index(["method", "concept_id"])
  assert heldout.loc[("Steer", 1), "score"] == 2.0


def test_method_summary_means_over_concepts():
  df = hand_table()
  summary = method_summary(heldout_scores(df, select_factors(df)))
  assert summary.method.tolist() == ["Prompt", "Steer"]  # best score first
  steer = summary.set_index("method").loc["Steer"]
  assert steer.score == pytest.approx(0.925) and steer.num_concepts == 2
  assert steer.perplexity == 10.0
  assert steer.concept_rating == pytest.approx(0.75) and steer.fluency_rating == 1.25
  assert steer.ci_low == 0.5 and steer.ci_high == 1.35  # two concepts: some resamples take one of them twice
  assert math.isnan(summary.set_index("method").loc["Prompt", "perplexity"])


def concept_scores(method, values):
  return pd.DataFrame({"method": method, "concept_id": range(len(values)), "score": values, "concept_rating": 1.0,
                       "instruction_rating": 1.0, "fluency_rating": 1.0, "perplexity": math.nan})


def test_bootstrap_ci_is_seeded_and_contains_the_mean():
  values = np.random.default_rng(7).uniform(0, 2, size=30)
  heldout = concept_scores("Steer", values)
  first, again = method_summary(heldout, n_boot=500, seed=4), method_summary(heldout, n_boot=500, seed=4)
  pd.testing.assert_frame_equal(first, again)
  resampled = np.random.default_rng(4).integers(0, 30, size=(500, 30))
  low, high = np.percentile(values[resampled].mean(axis=1), [2.5, 97.5])
  assert (first.ci_low[0], first.ci_high[0]) == (low, high)
  assert first.ci_low[0] < values.mean() < first.ci_high[0]
  assert method_summary(heldout, n_boot=500, seed=5).ci_low[0] != first.ci_low[0]


def test_bootstrap_ci_does_not_depend_on_other_methods():
  values = np.random.default_rng(7).uniform(0, 2, size=30)
  alone = method_summary(concept_scores("Steer", values))
  together = method_summary(pd.concat([concept_scores("Another", values[::-1] / 2), concept_scores("Steer", values)]))
  steer = together.set_index("method").loc["Steer"]
  assert (steer.ci_low, steer.ci_high) == (alone.ci_low[0], alone.ci_high[0])


def test_bootstrap_ci_collapses_for_identical_scores():
  summary = method_summary(concept_scores("Steer", [1.5] * 6))
  assert (summary.score[0], summary.ci_low[0], summary.ci_high[0]) == (1.5, 1.5, 1.5)


def test_winrate_hand_computed():
  heldout = pd.concat([
      concept_scores("SAE", [1.0, 1.0, 1.0, 1.0]),
      concept_scores("Steer", [1.5, 1.0, 0.5, 2.0]),  # win, tie, loss, win -> (1 + .5 + 0 + 1) / 4
      concept_scores("Other", [0.0, 2.0]),  # only concepts 0 and 1: loss, win -> .5
      concept_scores("Extra", [0.2, 0.2, 0.2, 0.2, 2.0]).iloc[4:],  # concept 4 only, which SAE lacks
  ])
  table = winrates(heldout, "SAE").set_index("method")
  assert table.loc["Steer", ["wins", "ties", "losses", "num_concepts"]].tolist() == [2, 1, 1, 4]
  assert table.loc["Steer", "winrate"] == 0.625
  assert table.loc["Other", "winrate"] == 0.5 and table.loc["Other", "num_concepts"] == 2
  assert table.loc["SAE", "winrate"] == 0.5 and table.loc["SAE", "ties"] == 4
  assert table.loc["Extra", "num_concepts"] == 0 and math.isnan(table.loc["Extra", "winrate"])
  assert winrates(heldout, "SAE").method.tolist() == ["Steer", "Other", "SAE", "Extra"]
  assert (table.baseline == "SAE").all()


def test_winrate_treats_rounding_noise_as_a_tie():
  heldout = pd.concat([concept_scores("SAE", [0.1 + 0.2]), concept_scores("Steer", [0.3])])
  assert winrates(heldout, "SAE").set_index("method").loc["Steer", "ties"] == 1


def with_value(column, label, value):
  """The hand table with one cell changed (row labels are 0..n-1)."""
  df = hand_table()
  if isinstance(value, float):
    df[column] = df[column].astype(float)
  df.loc[label, column] = value
  return df


def retyped(column, dtype):
  df = hand_table()
  df[column] = df[column].astype(dtype)
  return df


@pytest.mark.parametrize("df, message", [
    (hand_table().drop(columns="fluency_rating"), r"the rated table lacks column\(s\) \['fluency_rating'\]"),
    (hand_table().iloc[:0], r"the rated table has no rows"),
    (with_value("concept_rating", 0, 3), r"column 'concept_rating' must hold ratings 0, 1 or 2, got 3 in row 0"),
    (with_value("fluency_rating", 5, -1), r"column 'fluency_rating' must hold ratings 0, 1 or 2, got -1 in row 5"),
    (with_value("instruction_rating", 2, math.nan), r"column 'instruction_rating' must hold ratings 0, 1 or 2, got nan in row 2"),
    (with_value("split", 4, "train"), r"column 'split' must be 'select' or 'test', got 'train' in row 4"),
    (retyped("concept_id", float), r"column 'concept_id' must hold integers, got dtype float64"),
    (retyped("factor", str), r"column 'factor' must be numeric, got dtype str"),
    (retyped("perplexity", bool), r"column 'perplexity' must be numeric, got dtype bool"),
    (with_value("method", 0, ""), r"column 'method' must hold non-empty strings"),
    (with_value("factor", 0, math.inf), r"column 'factor' holds an infinite factor"),
    (with_value("concept", 0, "dogs"), r"concept \d has more than one concept name"),
    (pd.concat([hand_table(), hand_table().iloc[:1]]), r"method '\w+' has more than one row for concept \d, factor"),
])
def test_bad_tables_get_one_sentence(df, message):
  with pytest.raises(AxjaxError, match=message):
    select_factors(df)


def test_mixed_factors_within_a_method_are_refused():
  df = hand_table()
  df.loc[df.index[df.method == "Steer"][0], "factor"] = math.nan
  with pytest.raises(AxjaxError, match=r"method 'Steer' has a factor on some rows but NaN on others"):
    select_factors(df)


def test_instruction_in_both_splits_is_refused():
  df = hand_table()
  first = df.index[(df.method == "Steer") & (df.concept_id == 1) & (df.instruction_id == 0) & (df.factor == 0.5)][0]
  df.loc[first, "split"] = "test"
  with pytest.raises(AxjaxError, match=r"instruction 0 of concept 1 is in both the select and test splits"):
    factor_curves(df)


def test_harmonic_score_bad_shapes():
  with pytest.raises(AxjaxError, match=r"ratings must be \[N, 3\] \(one column per aspect\), got shape \(3,\)"):
    harmonic_score([1, 2, 2])
  with pytest.raises(AxjaxError, match=r"ratings must be finite and non-negative"):
    harmonic_score([[1, -1, 2]])


def test_factor_method_without_select_rows_is_refused():
  df = hand_table()
  df = df[~((df.method == "Steer") & (df.concept_id == 2) & (df.split == "select"))]
  with pytest.raises(AxjaxError, match=r"method 'Steer' has no select-split rows for concept 2, so no factor can be "
                                       r"chosen for it"):
    select_factors(df)


def test_heldout_refuses_bad_selections():
  df = hand_table()
  selection = select_factors(df)
  with pytest.raises(AxjaxError, match=r"the selection has no entry for method 'Prompt' and concept 1"):
    heldout_scores(df, selection.iloc[1:])
  with pytest.raises(AxjaxError, match=r"the selection lacks column\(s\) \['factor'\]"):
    heldout_scores(df, selection.drop(columns="factor"))
  with pytest.raises(AxjaxError, match=r"the selection has more than one row for method 'Prompt' and concept 1"):
    heldout_scores(df, pd.concat([selection, selection.iloc[:1]]))
  nan_for_steer = selection.assign(factor=math.nan)
  with pytest.raises(AxjaxError, match=r"the selection for method 'Steer' and concept 1 must be a factor"):
    heldout_scores(df, nan_for_steer)
  off_grid = selection.assign(factor=selection.factor.where(selection.method != "Steer", 3.0))
  with pytest.raises(AxjaxError, match=r"method 'Steer' has no test-split rows at its selected factor 3 for concept 1"):
    heldout_scores(df, off_grid)


def test_summary_and_winrate_refuse_bad_arguments():
  heldout = concept_scores("Steer", [1.0, 2.0])
  with pytest.raises(AxjaxError, match=r"n_boot must be a positive integer, got 0"):
    method_summary(heldout, n_boot=0)
  with pytest.raises(AxjaxError, match=r"baseline 'SAE' is not one of the evaluated methods \['Steer'\]"):
    winrates(heldout, "SAE")
  with pytest.raises(AxjaxError, match=r"the held-out table lacks column\(s\) \['score'\]"):
    winrates(heldout.drop(columns="score"), "Steer")


def test_mean_factor_curves_weigh_concepts_equally():
  means = mean_factor_curves(factor_curves(hand_table())).set_index(["method", "split", "factor"])
  assert means.loc[("Steer", "test", 1.0), "score"] == pytest.approx((1.35 + 2.0) / 2)
  assert means.loc[("Steer", "test", 1.0), "num_concepts"] == 2
  prompt_test = means.loc["Prompt"].reset_index()
  assert prompt_test[prompt_test.split == "test"].score.tolist() == [1.375]
