"""The steer job's evaluations: each generates its rows, rates them and writes a report into its own folder.

"steer" is AxBench's protocol (the job's top folder). RePS adds "suppress" (rows asking for the concept, negative
factors, concept rating reversed: HM(2 - concept, instruction, fluency)), "rules" (the same on rule concepts,
the concept rating replaced by the code's rule score, rounded) and "attacks" (the suppression's chosen factor
under each prompt attack, `suppression.ATTACKS`; reported with the score drop per method).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from axjax import atomic_files, processes
from axjax.judges.base import ASPECTS, Judge, RatingRequest
from axjax.steering_eval.generate_rows import generate_rows
from axjax.steering_eval.row_steerers import RowSteerer
from axjax.steering_eval.rows import row_vectors
from axjax.steering_eval.rules import rule_score

EVALS = ("steer", "suppress", "rules", "attacks")


def generate_and_rate(model, rows: pd.DataFrame, dictionaries: Mapping[str, Any], steerers: Mapping[str, RowSteerer],
                      judge: Judge, perplexity_of: dict, *, folder: str, progress: Callable, **generation
                      ) -> pd.DataFrame | None:
  """`rows` generated (resumable, under folder/steering/) and rated: the table with one `<aspect>_rating` column
  per aspect, None on processes other than the writer. Rows with an `original_instruction` are rated against it
  (suppression: the model saw a rewritten one). `generation`: `generate_rows`' keyword arguments."""
  atomic_files.write_parquet(os.path.join(folder, "steering", "rows.parquet"), rows)
  vectors, strengths = row_vectors(rows, dictionaries, skip=steerers)
  generations = generate_rows(model, rows, vectors, strengths, shard_dir=os.path.join(folder, "steering", "generations"),
                              progress=lambda done, total: progress("steered generation", done, total),
                              steerers=steerers, **generation)
  atomic_files.write_parquet(os.path.join(folder, "steering", "generations.parquet"), generations)
  if not processes.leave_to_writer():
    return None  # judging and reports are host work: process 0 does them alone
  table = rows.merge(generations, on="row_id", validate="one_to_one")
  judged = table["original_instruction"] if "original_instruction" in table else table["instruction"]
  perplexity_of.update(zip(zip(judged, table["generation"]), table["perplexity"]))
  ratings = judge.rate([RatingRequest(c, i, g) for c, i, g in zip(table["concept"], judged, table["generation"])],
                       progress=lambda done, total: progress(f"judge ({judge.name})", done, total))
  for column, aspect in enumerate(ASPECTS):
    table[f"{aspect}_rating"] = ratings[:, column].astype(np.int64)
  atomic_files.write_parquet(os.path.join(folder, "steering", "ratings.parquet"),
                             table[["row_id"] + [f"{a}_rating" for a in ASPECTS]].assign(judge=judge.name))
  if "original_instruction" in table:  # the report lists what was asked of the judge
    table = table.assign(asked=table["instruction"], instruction=judged)
  return table


def suppression_scored(table: pd.DataFrame, rules: bool) -> pd.DataFrame:
  """The rated suppression table with its concept rating reversed (2 - rating), so that AxBench's scoring gives
  HM(2 - concept, instruction, fluency); with `rules`, the concept rating is first replaced by the rule score
  (rounded to 0/1/2; the exact score kept in `rule_score`)."""
  if rules:
    exact = np.array([rule_score(c, g) for c, g in zip(table["concept"], table["generation"])])
    table = table.assign(rule_score=exact, concept_rating=np.clip(np.rint(exact), 0, 2).astype(np.int64))
  return table.assign(concept_rating=2 - table["concept_rating"])


def attack_drops(suppressed: dict[str, Any], attacked: dict[str, dict[str, Any]]) -> pd.DataFrame:
  """Per method and attack: held-out suppression score without and under the attack, and the drop."""
  base = {r["method"]: r["score"] for r in suppressed["summary"]}
  rows = [{"method": r["method"], "attack": name, "suppression": base.get(r["method"], np.nan),
           "attacked": r["score"], "drop": base.get(r["method"], np.nan) - r["score"]}
          for name, results in attacked.items() for r in results["summary"]]
  return pd.DataFrame(rows, columns=["method", "attack", "suppression", "attacked", "drop"])
