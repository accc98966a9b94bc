"""The steering job's rows: AxBench's instruction draw and split, strengths factor x max_act, bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from axjax.dictionary import Dictionary
from axjax.errors import AxjaxError
from axjax.methods import registry
from axjax.steering_eval.instructions import draw_instructions, read_instructions
from axjax.steering_eval.protocol import AXBENCH_FACTORS, SteeringProtocol, profile
from axjax.steering_eval.rows import row_vectors, steering_rows


def test_draw_is_axbench_pandas_sample():
  frame = pd.DataFrame({"i": range(805)})
  for concept_id in (0, 3, 41, 499):
    want = frame.sample(10, random_state=concept_id)["i"].to_numpy()
    np.testing.assert_array_equal(draw_instructions(805, concept_id, 10), want)


def test_rows_cross_methods_concepts_factors_and_instructions():
  instructions = [f"instruction {i}" for i in range(30)]
  protocol = SteeringProtocol(factors=(0.5, 2.0), instructions_per_concept=4, select_count=2)
  rows = steering_rows(["DiffMean", "PCA"], [(3, "cats"), (7, "rain")], instructions, protocol)
  assert len(rows) == 2 * 2 * 2 * 4
  np.testing.assert_array_equal(rows["row_id"], np.arange(len(rows)))
  cats = rows[(rows.method == "PCA") & (rows.concept_id == 3) & (rows.factor == 2.0)]
  drawn = draw_instructions(30, 3, 4)
  assert cats["instruction"].tolist() == [instructions[i] for i in drawn]
  assert cats["split"].tolist() == ["select", "select", "test", "test"]
  assert cats["instruction_id"].tolist() == [0, 1, 2, 3] and set(cats["factor_index"]) == {1}
  assert set(rows[rows.concept_id == 7]["concept"]) == {"rain"}


def dictionary(method, ids, max_acts, width=4):
  weights = np.eye(len(ids), width, dtype=np.float32)
  return Dictionary(weights=weights, biases=np.zeros(len(ids)), concept_ids=ids, concept_names=[str(i) for i in ids],
                    method=method, model_name="m", layer=1, max_activations=max_acts)


def test_row_vectors_scale_each_concepts_direction_by_factor_times_max_act():
  protocol = SteeringProtocol(factors=(0.5, 2.0), instructions_per_concept=2, select_count=1)
  rows = steering_rows(["DiffMean"], [(7, "b"), (3, "a")], ["x", "y", "z"], protocol)
  vectors, strengths = row_vectors(rows, {"DiffMean": dictionary("DiffMean", [3, 7], [10.0, 100.0])})
  for i, row in rows.iterrows():
    index = [3, 7].index(row.concept_id)
    np.testing.assert_array_equal(vectors[i], np.eye(2, 4)[index])
    assert strengths[i] == row.factor * [10.0, 100.0][index]


def test_row_vectors_refuse_a_missing_dictionary():
  protocol = SteeringProtocol(factors=(1.0,), instructions_per_concept=2, select_count=1)
  rows = steering_rows(["PCA"], [(3, "a")], ["x", "y"], protocol)
  with pytest.raises(AxjaxError, match="there is no dictionary for method 'PCA' to steer with"):
    row_vectors(rows, {"DiffMean": dictionary("DiffMean", [3], [1.0])})


def test_axbench_magnitude_rule_for_dead_or_missing_max_activations():
  """AxBench's pre_compute_mean_activations: max_act <= 0 becomes 50, a missing one 1.0."""
  protocol = SteeringProtocol(factors=(0.5, 2.0), instructions_per_concept=2, select_count=1)
  rows = steering_rows(["ReFT-r1"], [(1, "a"), (2, "b"), (3, "c"), (4, "d")], ["x", "y"], protocol)
  max_acts = {1: 0.0, 2: -3.0, 3: np.nan, 4: 7.5}
  want = {1: 50.0, 2: 50.0, 3: 1.0, 4: 7.5}
  _, strengths = row_vectors(rows, {"ReFT-r1": dictionary("ReFT-r1", [1, 2, 3, 4], list(max_acts.values()))})
  for i, row in rows.iterrows():
    assert strengths[i] == np.float32(row.factor * want[row.concept_id])
  _, unknown = row_vectors(rows, {"ReFT-r1": dictionary("ReFT-r1", [1, 2, 3, 4], None)})
  np.testing.assert_array_equal(unknown, rows["factor"].to_numpy(np.float32))


def test_instruction_files_and_their_errors(tmp_path):
  assert len(read_instructions(None)) == 805
  (tmp_path / "a.jsonl").write_text('{"instruction": "one"}\n\n{"instruction": "two"}\n')
  (tmp_path / "b.json").write_text(json.dumps([{"instruction": "three"}]))
  (tmp_path / "c.txt").write_text("four\nfive\n")
  assert read_instructions(str(tmp_path / "a.jsonl")) == ("one", "two")
  assert read_instructions(str(tmp_path / "b.json")) == ("three",)
  assert read_instructions(str(tmp_path / "c.txt")) == ("four", "five")
  (tmp_path / "d.jsonl").write_text('{"prompt": "x"}\n')
  with pytest.raises(AxjaxError, match="is not a list of records with an 'instruction' field"):
    read_instructions(str(tmp_path / "d.jsonl"))
  with pytest.raises(AxjaxError, match="does not exist"):
    read_instructions(str(tmp_path / "missing.jsonl"))
  with pytest.raises(AxjaxError, match="10 instructions per concept were asked for but the instruction set has only 2"):
    draw_instructions(2, 0, 10)


def test_protocol_and_profiles_check_their_settings():
  assert profile("paper").protocol.factors == AXBENCH_FACTORS and profile("paper").max_concepts is None
  with pytest.raises(AxjaxError, match="unknown profile 'huge'"):
    profile("huge")
  with pytest.raises(AxjaxError, match="needs 0 < select_count < instructions per concept, got 4 of 4"):
    SteeringProtocol(instructions_per_concept=4, select_count=4)
  with pytest.raises(AxjaxError, match="unknown steering intervention 'ablate'"):
    SteeringProtocol(intervention="ablate")
  with pytest.raises(AxjaxError, match="without repeats"):
    SteeringProtocol(factors=(1.0, 1.0))


def test_methods_without_a_factor_get_one_row_per_instruction():
  protocol = SteeringProtocol(factors=(0.5, 1.0, 2.0), instructions_per_concept=4, select_count=2)
  rows = steering_rows(["LoReFT", "DiffMean"], [(3, "a")], ["w", "x", "y", "z"], protocol, factorless={"LoReFT"})
  loreft, diffmean = rows[rows["method"] == "LoReFT"], rows[rows["method"] == "DiffMean"]
  assert len(loreft) == 4 and loreft["factor"].isna().all() and (loreft["factor_index"] == 0).all()
  assert len(diffmean) == 3 * 4
  # the same instructions, so both are judged on the same held-out half
  assert loreft["instruction"].tolist() == diffmean[diffmean["factor_index"] == 0]["instruction"].tolist()
  vectors, strengths = row_vectors(rows, {"DiffMean": dictionary("DiffMean", [3], [2.0])})
  assert (strengths[loreft.index] == 0).all() and (vectors[loreft.index] == 0).all()
  assert strengths[diffmean.index].tolist() == [0.5 * 2.0] * 4 + [1.0 * 2.0] * 4 + [2.0 * 2.0] * 4


def test_profiles_name_registered_methods_and_prompt_writers():
  paper, quick = profile("paper"), profile("quick")
  kinds = {registry.method(m).kind for m in paper.methods}
  assert kinds == {"direction", "adapter", "sft", "prompt", "bow", "attribution"}  # Tables 1 and 2
  assert paper.prompt_writer == "judge" and quick.prompt_writer == "fallback"
  assert quick.methods[0] == "PromptSteering"  # AxBench's win-rate baseline, one generation per instruction
