"""RePS and its baselines through `python -m experiments.steer` on a tiny model: the three edits trained with
RePS, the LM objective and BiPO, saved, and steered at their own factor grids; bad hyperparameters refused."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import axjax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["SV-RePS", "LoReFT-RePS", "LoRA-RePS", "SV-Lang", "LoRA-BiPO"]
GRIDS = {"SV-RePS": [2.0, 4.0], "SV-Lang": [2.0, 4.0], "LoReFT-RePS": [0.5, 1.0], "LoRA-RePS": [0.5, 1.0],
         "LoRA-BiPO": [0.5, 1.0]}


def steer(tiny, out, cache, *flags, timeout=900):
  return subprocess.run([sys.executable, "-m", "experiments.steer", f"--model={tiny}", "--layer=1",
                         "--max_concepts=2", "--max_examples=8", "--num_instructions=2", "--max_new_tokens=6",
                         "--batch_size=8", f"--output_dir={out}", *flags], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "AXJAX_CACHE": str(cache)})


def test_every_edit_and_objective_trains_and_steers_at_its_grid(tiny_with_tokenizer, tmp_path):
  hparams = [f"{m}.{k}={v}" for m in METHODS for k, v in
             [("n_epochs", 1), ("response_tokens", 6), ("steering_factors", "+".join(f"{f:g}" for f in GRIDS[m]))]]
  out = tmp_path / "steer"
  result = steer(tiny_with_tokenizer, out, tmp_path / "cache", f"--methods={','.join(METHODS)}",
                 "--hparams=" + ",".join(hparams + ["LoReFT-RePS.layers=1+3"]))
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


@pytest.mark.parametrize("flags, message", [
    (["--methods=LoReFT-RePS", "--hparams=LoReFT-RePS.subtraction=null_out"],
     "error: LoReFT-RePS.subtraction=null_out nulls a steering vector out"),
    (["--methods=SV-RePS", "--hparams=SV-RePS.steering_factors=2+x"],
     "error: SV-RePS.steering_factors must be numbers joined by '+'"),
    (["--methods=LoRA-RePS", "--hparams=LoRA-RePS.loss_type=ipo"], "error: LoRA-RePS.loss_type must be one of"),
])
def test_bad_preference_hyperparameters_are_refused_in_one_sentence(tiny_with_tokenizer, tmp_path, flags, message):
  out = tmp_path / "refused"
  result = steer(tiny_with_tokenizer, out, tmp_path / "cache", *flags, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-1000:]
  assert not out.exists()
