"""The steering job's rows: every (method, concept, factor, instruction) to generate, with its vector and key."""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from axjax.dictionary import Dictionary
from axjax.errors import AxjaxError
from axjax.methods import registry
from axjax.steering_eval.instructions import draw_instructions
from axjax.steering_eval.protocol import SteeringProtocol


def steering_rows(methods: Sequence[str], concepts: Sequence[tuple[int, str]], instructions: Sequence[str],
                  protocol: SteeringProtocol, factorless: Collection[str] = (),
                  factor_grids: Mapping[str, Sequence[float]] | None = None) -> pd.DataFrame:
  """One row per (method, concept, factor, instruction), in that nesting order, with a stable `row_id`.

  Instructions are drawn per concept as AxBench draws them; the first `select_count` form the "select" split.
  Methods in `factorless` (LoReFT, LoRA, SFT, prompting) get one row per instruction, factor NaN: AxBench gives
  them a row per factor, which it ignores, and averages them, the same expectation at 1/len(factors) the cost.
  A method in `factor_grids` (RePS's) steers at its own factors instead of the protocol's.
  """
  records = []
  for method in methods:
    factors = [np.nan] if method in factorless else (factor_grids or {}).get(method, protocol.factors)
    for concept_id, concept in concepts:
      drawn = draw_instructions(len(instructions), concept_id, protocol.instructions_per_concept)
      for factor_index, factor in enumerate(factors):
        for position, index in enumerate(drawn):
          records.append((method, concept_id, concept, float(factor), factor_index, position, instructions[index],
                          "select" if position < protocol.select_count else "test"))
  rows = pd.DataFrame.from_records(records, columns=["method", "concept_id", "concept", "factor", "factor_index",
                                                     "instruction_id", "instruction", "split"])
  rows.insert(0, "row_id", np.arange(len(rows), dtype=np.int64))
  return rows


def steering_magnitude(max_activations: np.ndarray) -> np.ndarray:
  """AxBench's max_act for steering strength: the concept's max activation, 50 where it is <= 0 (a direction
  that never fires still steers) and 1.0 where it is unknown (NaN), as its pre_compute_mean_activations."""
  max_act = np.asarray(max_activations, np.float32)
  return np.where(np.isnan(max_act), np.float32(1.0), np.where(max_act <= 0, np.float32(50.0), max_act))


def row_vectors(rows: pd.DataFrame, dictionaries: Mapping[str, Dictionary], skip: Collection[str] = ()
                ) -> tuple[np.ndarray, np.ndarray]:
  """Each row's steering vector [N, d] as stored in its method's dictionary (`Dictionary.steering_vectors`),
  and its strength [N] = factor * the concept's `steering_magnitude` (AxBench's rule); zero for the rows of a
  method steering without a factor or in `skip` (those that steer their own way: `row_steerers`)."""
  width = {d.hidden_size for d in dictionaries.values()}
  if len(width) != 1:
    raise AxjaxError(f"the dictionaries to steer with have different widths {sorted(width)}")
  vectors = np.zeros((len(rows), width.pop()), np.float32)
  strengths = np.zeros(len(rows), np.float32)
  for method, group in rows.groupby("method", sort=False):
    if group["factor"].isna().all() or method in skip:
      continue
    if method not in dictionaries:
      raise AxjaxError(f"there is no dictionary for method {method!r} to steer with")
    d = dictionaries[method]
    vectors[group.index] = d.steering_vectors()[d.rows_of(group["concept_id"])]
    strengths[group.index] = row_strengths(group, d)
  return vectors, strengths


def row_strengths(rows: pd.DataFrame, dictionary: Dictionary) -> np.ndarray:
  """[N] float32: each row's factor * its concept's `steering_magnitude` in `dictionary` (AxBench's strength).

  A RePS vector steers with its factor alone (upstream's max_act is 1) and suppresses (factor < 0) with
  factor - b, its trained bias b (upstream's AdditionSuppressionIntervention)."""
  index = dictionary.rows_of(rows["concept_id"])
  factor = rows["factor"].to_numpy(np.float32)
  if registry.method(dictionary.method).kind == "preference":
    return np.where(factor < 0, factor - dictionary.biases[index], factor).astype(np.float32)
  return factor * steering_magnitude(dictionary.max_activations[index])
