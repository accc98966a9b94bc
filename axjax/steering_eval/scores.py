"""AxBench's steering numbers from a table of rated generations, as its lm_judge.py and evaluate.py compute them.

Each generation scores the harmonic mean of its three 0-2 ratings (0 if any is 0). Per method and concept the
factor is chosen on the "select" split (AxBench: input_id < 5) and reported on the held-out "test" split; methods
without factors (prompting, fine-tuning) have NaN there and report all their test rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from axjax.errors import AxjaxError
from axjax.judges.base import ASPECTS

RATINGS = tuple(f"{aspect}_rating" for aspect in ASPECTS)
SPLITS = ("select", "test")
COLUMNS = ("method", "concept_id", "concept", "factor", "instruction_id", "instruction", "split", "generation",
           *RATINGS, "perplexity")
MEASURES = ("score", *RATINGS, "perplexity")  # what curves, held-out tables and summaries average
KEY = ["method", "concept_id"]
TIE_TOLERANCE = 1e-9  # score differences this small are ties, so summation order never decides a winrate


def harmonic_score(ratings: Any) -> np.ndarray:
  """[N] harmonic mean of each row of [N, 3] ratings, 0 where any rating is 0 (AxBench's overall score)."""
  ratings = np.asarray(ratings, dtype=np.float64)
  if ratings.ndim != 2 or ratings.shape[1] != len(ASPECTS):
    raise AxjaxError(f"ratings must be [N, {len(ASPECTS)}] (one column per aspect), got shape {ratings.shape}")
  if not (np.isfinite(ratings).all() and (ratings >= 0).all()):
    raise AxjaxError("ratings must be finite and non-negative")
  rated = (ratings > 0).all(axis=1)
  inverse = 1.0 / np.where(rated[:, None], ratings, 1.0)
  return np.where(rated, len(ASPECTS) / inverse.sum(axis=1), 0.0)


def factor_curves(df: pd.DataFrame) -> pd.DataFrame:
  """Per (method, concept_id, split, factor): mean score, ratings and perplexity, and the row count."""
  return _curves(_scored(df))


def mean_factor_curves(curves: pd.DataFrame) -> pd.DataFrame:
  """Per (method, split, factor): factor_curves' means averaged over concepts (each weighs the same), as plotted."""
  _require(curves, ["method", "concept_id", "split", "factor", *MEASURES], "the factor curves")
  means = {measure: (measure, "mean") for measure in MEASURES}
  grouped = curves.groupby(["method", "split", "factor"], dropna=False, sort=True)
  return grouped.agg(**means, num_concepts=("concept_id", "nunique")).reset_index()


def select_factors(df: pd.DataFrame) -> pd.DataFrame:
  """Per (method, concept_id): the factor of highest mean select-split score, the smallest on ties; NaN if factor-less.

  Columns method, concept_id, factor, select_score (NaN for a factor-less method without select rows).
  """
  scored = _scored(df)
  curves = _curves(scored)
  select = curves[curves["split"] == "select"].sort_values([*KEY, "factor"], na_position="last")
  best = select.loc[select.groupby(KEY)["score"].idxmax(), [*KEY, "factor", "score"]]
  pairs = scored[KEY].drop_duplicates().sort_values(KEY)
  selection = pairs.merge(best, on=KEY, how="left").rename(columns={"score": "select_score"})
  unselected = selection[selection["method"].isin(_factor_methods(scored)) & selection["factor"].isna()]
  if len(unselected):
    method, concept_id = unselected.iloc[0][KEY]
    raise AxjaxError(f"method {method!r} has no select-split rows for concept {concept_id}, so no factor can be "
                     f"chosen for it")
  return selection.sort_values(KEY).reset_index(drop=True)


def heldout_scores(df: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
  """Per (method, concept_id): test-split means at the selected factor (all test rows for factor-less methods).

  Columns method, concept_id, concept, factor, score, the ratings, perplexity and count (test rows averaged).
  """
  scored = _scored(df)
  _require(selection, [*KEY, "factor"], "the selection")
  _unique_pairs(selection, "the selection")
  pairs = scored[KEY].drop_duplicates().sort_values(KEY)
  chosen = pairs.merge(selection[[*KEY, "factor"]], on=KEY, how="left", indicator=True)
  missing = chosen[chosen["_merge"] == "left_only"]
  if len(missing):
    method, concept_id = missing.iloc[0][KEY]
    raise AxjaxError(f"the selection has no entry for method {method!r} and concept {concept_id}")
  with_factor = chosen["method"].isin(_factor_methods(scored))
  wrong = chosen[with_factor == chosen["factor"].isna()]
  if len(wrong):
    method, concept_id = wrong.iloc[0][KEY]
    expected = "a factor" if method in _factor_methods(scored) else "NaN, as the method has no factors"
    raise AxjaxError(f"the selection for method {method!r} and concept {concept_id} must be {expected}")
  test = scored[scored["split"] == "test"].merge(
      chosen[[*KEY, "factor"]].rename(columns={"factor": "selected"}), on=KEY)
  kept = test[test["selected"].isna() | (test["factor"] == test["selected"])]
  means = {measure: (measure, "mean") for measure in MEASURES}
  heldout = kept.groupby(KEY).agg(concept=("concept", "first"), factor=("selected", "first"), **means,
                                  count=("score", "size")).reset_index()
  absent = pairs.merge(heldout[KEY], on=KEY, how="left", indicator=True)
  absent = absent[absent["_merge"] == "left_only"]
  if len(absent):
    method, concept_id = absent.iloc[0][KEY]
    factor = chosen.set_index(KEY).loc[(method, concept_id), "factor"]
    where = "" if np.isnan(factor) else f" at its selected factor {factor:g}"
    raise AxjaxError(f"method {method!r} has no test-split rows{where} for concept {concept_id}")
  return heldout


def method_summary(heldout: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
  """Per method: mean held-out score over concepts with a percentile bootstrap 95% CI over concepts, and means.

  Columns method, num_concepts, score, ci_low, ci_high, the ratings and perplexity; best score first. Each method
  resamples with a fresh numpy Generator(seed), so its CI does not depend on which other methods are present.
  """
  _require(heldout, [*KEY, *MEASURES], "the held-out table")
  _unique_pairs(heldout, "the held-out table")
  if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
    raise AxjaxError(f"n_boot must be a positive integer, got {n_boot!r}")
  rows = []
  for method, group in heldout.groupby("method", sort=True):
    concept_scores = group["score"].to_numpy(np.float64)
    resampled = np.random.default_rng(seed).integers(0, len(concept_scores), size=(n_boot, len(concept_scores)))
    low, high = np.percentile(concept_scores[resampled].mean(axis=1), [2.5, 97.5])
    rows.append({"method": method, "num_concepts": len(group), "score": float(concept_scores.mean()),
                 "ci_low": float(low), "ci_high": float(high),
                 **{measure: float(group[measure].mean()) for measure in MEASURES[1:]}})
  summary = pd.DataFrame(rows)
  return summary.sort_values(["score", "method"], ascending=[False, True]).reset_index(drop=True)


def winrates(heldout: pd.DataFrame, baseline: str) -> pd.DataFrame:
  """Per method: share of the concepts it shares with `baseline` where it scores higher (1 win, 0.5 tie, 0 loss).

  Columns method, baseline, wins, ties, losses, num_concepts, winrate (NaN without shared concepts); best first.
  """
  _require(heldout, [*KEY, "score"], "the held-out table")
  _unique_pairs(heldout, "the held-out table")
  methods = sorted(heldout["method"].unique())
  if baseline not in methods:
    raise AxjaxError(f"baseline {baseline!r} is not one of the evaluated methods {methods}")
  base = heldout.loc[heldout["method"] == baseline, ["concept_id", "score"]]
  paired = heldout[[*KEY, "score"]].merge(base.rename(columns={"score": "baseline_score"}), on="concept_id")
  difference = (paired["score"] - paired["baseline_score"]).to_numpy()
  paired["outcome"] = np.where(np.abs(difference) <= TIE_TOLERANCE, 0.5, np.where(difference > 0, 1.0, 0.0))
  rows = []
  for method in methods:
    outcomes = paired.loc[paired["method"] == method, "outcome"].to_numpy()
    rows.append({"method": method, "baseline": baseline, "wins": int((outcomes == 1.0).sum()),
                 "ties": int((outcomes == 0.5).sum()), "losses": int((outcomes == 0.0).sum()),
                 "num_concepts": len(outcomes), "winrate": float(outcomes.mean()) if len(outcomes) else np.nan})
  table = pd.DataFrame(rows)
  return table.sort_values(["winrate", "method"], ascending=[False, True], na_position="last").reset_index(drop=True)


def _curves(scored: pd.DataFrame) -> pd.DataFrame:
  """factor_curves of an already checked and scored table."""
  means = {measure: (measure, "mean") for measure in MEASURES}
  grouped = scored.groupby([*KEY, "split", "factor"], dropna=False, sort=True)
  return grouped.agg(**means, count=("score", "size")).reset_index()


def _scored(df: pd.DataFrame) -> pd.DataFrame:
  """The rated table with its per-generation `score` column, or one sentence on what is wrong with it."""
  if not isinstance(df, pd.DataFrame):
    raise AxjaxError(f"the rated generations must be a pandas DataFrame, got {type(df).__name__}")
  _require(df, list(COLUMNS), "the rated table")
  if df.empty:
    raise AxjaxError("the rated table has no rows")
  if not df["method"].map(lambda value: isinstance(value, str) and value != "").all():
    raise AxjaxError("column 'method' must hold non-empty strings")
  for column in ("concept_id", "instruction_id"):
    if not pd.api.types.is_integer_dtype(df[column]):
      raise AxjaxError(f"column {column!r} must hold integers, got dtype {df[column].dtype}")
  for column in ("factor", *RATINGS, "perplexity"):
    if pd.api.types.is_bool_dtype(df[column]) or not pd.api.types.is_numeric_dtype(df[column]):
      raise AxjaxError(f"column {column!r} must be numeric, got dtype {df[column].dtype}")
  for column in RATINGS:
    bad = df.loc[~df[column].isin([0, 1, 2]), column]
    if len(bad):
      raise AxjaxError(f"column {column!r} must hold ratings 0, 1 or 2, got {bad.iloc[0]} in row {bad.index[0]}")
  bad_splits = df.loc[~df["split"].isin(SPLITS), "split"]
  if len(bad_splits):
    raise AxjaxError(f"column 'split' must be 'select' or 'test', got {bad_splits.iloc[0]!r} in row "
                     f"{bad_splits.index[0]}")
  if np.isinf(df["factor"].to_numpy(np.float64)).any():
    raise AxjaxError("column 'factor' holds an infinite factor")
  has_factor = df["factor"].notna().groupby(df["method"]).agg(["any", "all"])
  mixed = has_factor.index[has_factor["any"] & ~has_factor["all"]]
  if len(mixed):
    raise AxjaxError(f"method {mixed[0]!r} has a factor on some rows but NaN on others")
  names = df.groupby("concept_id")["concept"].nunique(dropna=False)
  if (names > 1).any():
    raise AxjaxError(f"concept {names.index[names > 1][0]} has more than one concept name")
  splits = df.groupby(["concept_id", "instruction_id"])["split"].nunique()
  if (splits > 1).any():
    concept_id, instruction_id = splits.index[splits > 1][0]
    raise AxjaxError(f"instruction {instruction_id} of concept {concept_id} is in both the select and test splits")
  duplicated = df[df.duplicated([*KEY, "factor", "instruction_id"])]
  if len(duplicated):
    row = duplicated.iloc[0]
    raise AxjaxError(f"method {row['method']!r} has more than one row for concept {row['concept_id']}, factor "
                     f"{row['factor']:g} and instruction {row['instruction_id']}")
  return df.assign(score=harmonic_score(df[list(RATINGS)].to_numpy(np.float64)))


def _factor_methods(scored: pd.DataFrame) -> set[str]:
  """Methods whose rows carry a steering factor."""
  return set(scored.loc[scored["factor"].notna(), "method"])


def _require(frame: Any, columns: list[str], name: str) -> None:
  """Raises one sentence unless `frame` is a DataFrame with all of `columns`."""
  if not isinstance(frame, pd.DataFrame):
    raise AxjaxError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
  missing = [column for column in columns if column not in frame.columns]
  if missing:
    raise AxjaxError(f"{name} lacks column(s) {missing}")


def _unique_pairs(frame: pd.DataFrame, name: str) -> None:
  """Raises one sentence if `frame` has two rows for one (method, concept_id)."""
  duplicated = frame[frame.duplicated(KEY)]
  if len(duplicated):
    method, concept_id = duplicated.iloc[0][KEY]
    raise AxjaxError(f"{name} has more than one row for method {method!r} and concept {concept_id}")
