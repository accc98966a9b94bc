"""RePS and its baselines through `python -m experiments.steer` on a tiny model: the three edits trained with
RePS, the LM objective and BiPO, saved, steered at their own factor grids, then suppressing and attacked
(`--evals`); rule suppression scored by code; bad hyperparameters refused."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import axjax
from axjax.errors import AxjaxError
from axjax.methods.preference_methods import training_hyperparameters
from axjax.methods.registry import hyperparameters, method
from axjax.model.config import PRESETS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["SV-RePS", "LoReFT-RePS", "LoRA-RePS", "SV-Lang", "LoRA-BiPO"]
GRIDS = {"SV-RePS": [2.0, 4.0], "SV-Lang": [2.0, 4.0], "LoReFT-RePS": [0.5, 1.0], "LoRA-RePS": [0.5, 1.0],
         "LoRA-BiPO": [0.5, 1.0]}


def steer(tiny, out, cache, *flags, timeout=900):
  return subprocess.run([sys.executable, "-m", "experiments.steer", f"--model={tiny}", "--layer=1",
                         "--max_concepts=2", "--max_examples=8", "--num_instructions=2", "--max_new_tokens=6",
                         "--batch_size=8", f"--output_dir={out}", *flags], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "AXJAX_CACHE": str(cache)})


def test_every_edit_and_objective_trains_steers_suppresses_and_is_attacked(tiny_with_tokenizer, tmp_path):
  """The three edits with RePS, the LM objective and BiPO, beside DiffMean, PromptSteering and AxBench's LoReFT,
  through --evals=steer,suppress,attacks in one run."""
  hparams = [f"{m}.{k}={v}" for m in METHODS for k, v in
             [("n_epochs", 1), ("response_tokens", 6), ("steering_factors", "+".join(f"{f:g}" for f in GRIDS[m]))]]
  out = tmp_path / "steer"
  methods = METHODS + ["DiffMean", "PromptSteering", "LoReFT"]
  result = steer(tiny_with_tokenizer, out, tmp_path / "cache", f"--methods={','.join(methods)}", "--factors=0.5",
                 "--evals=steer,suppress,attacks",
                 "--hparams=" + ",".join(hparams + ["LoReFT-RePS.layers=1+3", "LoReFT.n_epochs=1"]))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = pd.read_parquet(out / "steering" / "rows.parquet")
  for name, grid in GRIDS.items():
    mine = rows[rows["method"] == name]
    assert sorted(mine["factor"].unique()) == grid and len(mine) == 2 * len(grid) * 2, name
  generations = pd.read_parquet(out / "steering" / "generations.parquet")
  assert len(generations) == len(rows) and (generations["generated_tokens"] > 0).all()

  sv = axjax.load_dictionary(out / "dictionaries" / "SV-RePS", layer=1)
  assert sv.weights.shape == (2, 64) and np.isfinite(sv.weights).all() and sv.biases.any()  # trained bias
  assert sv.hyperparameters["subtraction"] == "null_out" and sv.hyperparameters["loss_type"] == "scaled_simpo"
  loreft = axjax.load_dictionary(out / "dictionaries" / "LoReFT-RePS", layer=1)
  assert loreft.weights is None and loreft.extras["rotation"].shape == (2, 2, 4, 64)
  assert loreft.hyperparameters["layers"] == "1+3"
  lora = axjax.load_dictionary(out / "dictionaries" / "LoRA-BiPO", layer=1)
  assert lora.extras["b"].shape == (2, 3, 4, 64) and lora.hyperparameters["loss_type"] == "dpo"
  for name in METHODS:
    record = pd.read_parquet(out / "training" / f"{name}.parquet")
    assert np.isfinite(record["loss"]).all() and set(record["concept_id"]) == {0, 1}, name
  assert "lm" in pd.read_parquet(out / "training" / "SV-Lang.parquet")  # the LM objective's record
  assert "accuracy" in pd.read_parquet(out / "training" / "SV-RePS.parquet")
  cached = list((tmp_path / "cache" / "own_responses").glob("*-6.parquet"))
  assert len(cached) == 1 and len(pd.read_parquet(cached[0])) > 0  # generated once, shared by every method
  report = (out / "report.md").read_text()
  assert all(f"| {name} |" in report for name in METHODS)

  # Suppression: the factor methods and the prompting baseline; AxBench's LoReFT has no factor to negate.
  assert "suppress: LoReFT steer without a factor and cannot suppress; left out" in result.stderr + result.stdout
  rows = pd.read_parquet(out / "suppression" / "steering" / "rows.parquet")
  assert set(rows["method"]) == set(methods) - {"LoReFT"}
  factored = rows[rows["method"] != "PromptSteering"]
  assert (factored["factor"] < 0).all() and rows[rows["method"] == "PromptSteering"]["factor"].isna().all()
  assert (rows["instruction"] != rows["original_instruction"]).all()  # rewritten to ask for the concept
  assert json.load(open(out / "suppression" / "texts.json"))["sources"] == ["template"]
  results = json.load(open(out / "suppression" / "results.json"))
  assert {r["method"] for r in results["summary"]} == set(rows["method"])
  assert len(pd.read_parquet(out / "suppression" / "steering" / "ratings.parquet")) == len(rows)
  chosen = {(r["method"], r["concept_id"]): r["factor"] for r in results["selection"]}
  for attack in ("override_append", "override_prepend", "many_shot"):
    attacked = pd.read_parquet(out / "attacks" / attack / "steering" / "rows.parquet")
    for r in attacked.itertuples():  # every row at its concept's chosen suppression factor
      assert r.factor == chosen[(r.method, r.concept_id)] or (np.isnan(r.factor) and r.method == "PromptSteering")
    assert attacked.groupby(["method", "concept_id"]).size().eq(2).all()  # one factor, both instructions
  assert attacked["instruction"].str.startswith("Question: ").all()  # the many-shot turns come first
  drops = pd.read_parquet(out / "attacks" / "drops.parquet")
  assert len(drops) == 3 * 7 and np.allclose(drops["drop"], drops["suppression"] - drops["attacked"])
  report = (out / "report.md").read_text()
  assert "## Suppression and attacks (RePS)" in report and "| SV-RePS | many_shot |" in report


@pytest.mark.parametrize("overrides, message", [
    ({"subtraction": "null_out"}, "LoReFT-RePS.subtraction=null_out nulls a steering vector out"),
    ({"factors": "2+x"}, "LoReFT-RePS.factors must be numbers joined by '+'"),
    ({"factors": "2+2"}, "LoReFT-RePS.factors repeats a factor"),
    ({"loss_type": "ipo"}, "LoReFT-RePS.loss_type must be one of"),
    ({"n_epochs": "0"}, "LoReFT-RePS batch_size, gradient_accumulation_steps, n_epochs and response_tokens must"),
])
def test_bad_preference_hyperparameters_are_refused_in_one_sentence(overrides, message):
  with pytest.raises(AxjaxError, match=re.escape(message)):
    training_hyperparameters("LoReFT-RePS", hyperparameters(method("LoReFT-RePS"), PRESETS["gemma-3-270m"], overrides))


def test_a_bad_grid_is_refused_before_any_model_work(tiny_with_tokenizer, tmp_path):
  out = tmp_path / "refused"
  result = steer(tiny_with_tokenizer, out, tmp_path / "cache", "--methods=SV-RePS",
                 "--hparams=SV-RePS.steering_factors=2+x", timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: SV-RePS.steering_factors must be numbers joined by '+'"), result.stderr[-1000:]
  assert not out.exists()


RULE_DATA = {0: ("use only capital letters", str.upper),
             1: ("include a postscript at the end of your response that starts with P.S.",
                 lambda text: text + "\n\nP.S. Thank you for reading.")}


@pytest.fixture
def rule_data(tmp_path):
  """Concept10's first two concepts renamed to two rules, their positives rewritten to follow them."""
  source = os.path.join(REPO, "axjax", "data", "axbench", "concept10", "prod_2b_l20_v1")
  folder = tmp_path / "rules_data"
  (folder / "generate").mkdir(parents=True)
  train = pd.read_parquet(os.path.join(source, "generate", "train_data.parquet"))
  train = train[train["concept_id"] <= 1].copy()
  for cid, (rule, follow) in RULE_DATA.items():
    mine = train["concept_id"] == cid
    train.loc[mine, "output_concept"] = rule
    train.loc[mine, "output"] = train.loc[mine, "output"].map(follow)
  train.to_parquet(folder / "generate" / "train_data.parquet")
  lines = [json.loads(line) for line in open(os.path.join(source, "generate", "metadata.jsonl"))][:2]
  for line in lines:
    rule = RULE_DATA[line["concept_id"]][0]
    line.update(concept=rule, concept_genres_map={rule: ["text"]})
  (folder / "generate" / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  return folder


def test_rule_suppression_is_scored_by_code(tiny_with_tokenizer, tmp_path, rule_data):
  out = tmp_path / "rules"
  result = steer(tiny_with_tokenizer, out, tmp_path / "cache", f"--data={rule_data}", "--methods=SV-RePS",
                 "--evals=rules", "--hparams=SV-RePS.n_epochs=1,SV-RePS.response_tokens=6,SV-RePS.steering_factors=2+4")
  assert result.returncode == 0, result.stderr[-3000:]
  assert not (out / "steering").exists()  # steer was not asked for
  rows = pd.read_parquet(out / "rules" / "steering" / "rows.parquet")
  assert set(rows["factor"]) == {-2.0, -4.0} and set(rows["concept"]) == {r for r, _ in RULE_DATA.values()}
  results = json.load(open(out / "rules" / "results.json"))
  assert results["settings"]["evaluation"] == "rules" and results["summary"][0]["method"] == "SV-RePS"
  assert "## Suppression and attacks (RePS)" in (out / "report.md").read_text()


def test_rules_evaluation_refuses_concepts_that_are_not_rules(tiny_with_tokenizer, tmp_path):
  out = tmp_path / "refused"
  result = steer(tiny_with_tokenizer, out, tmp_path / "cache", "--methods=SV-RePS", "--evals=rules", timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: the rules evaluation needs rule concepts and 'references to rental services and associated equipment' "
      "is not one of the 20 rules")
  assert not out.exists()


def test_the_reps_evaluations_are_refused_in_a_multi_process_job(monkeypatch):
  from experiments import suppression_run
  monkeypatch.setattr(suppression_run.processes, "multi", lambda: True)
  assert suppression_run.check_evals(["steer"], ["cats"]) == ["steer"]
  with pytest.raises(AxjaxError, match="--evals=suppress, rules and attacks run in a one-process job"):
    suppression_run.check_evals(["steer", "suppress"], ["cats"])
