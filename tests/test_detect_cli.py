"""`python -m experiments.detect`: end to end on a tiny model, resumable, refusing bad input in one sentence."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd

import axjax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def detect(*flags, timeout=600):
  return subprocess.run([sys.executable, "-m", "experiments.detect", *flags], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def test_detect_trains_evaluates_and_resumes(tiny_with_tokenizer, tmp_path):
  out = str(tmp_path / "run")
  common = [f"--model={tiny_with_tokenizer}", "--layer=1", "--max_concepts=2", f"--output_dir={out}"]
  first = detect(*common, "--methods=DiffMean,Random")
  assert first.returncode == 0, first.stderr[-2000:]
  report = json.load(open(os.path.join(out, "detection.json")))
  assert set(report) == {"DiffMean", "Random"}
  for method in report.values():
    assert [c["concept_id"] for c in method["concepts"]] == [0, 1]
    assert 0.0 <= method["mean"]["roc"]["roc_auc"] <= 1.0
  dictionary = axjax.load_dictionary(os.path.join(out, "dictionaries", "DiffMean"), layer=1)
  assert dictionary.weights.shape == (2, 64) and np.isfinite(dictionary.max_activations).all()
  assert "| **mean** |" in open(os.path.join(out, "summary.md")).read()
  described = json.load(open(os.path.join(out, "descriptions.json")))
  assert [d["method"] for d in described] == ["DiffMean", "Random"]
  for entry in described:
    assert [c["concept_id"] for c in entry["concepts"]] == [0, 1]
    assert all(len(c[key]) == 10 for c in entry["concepts"] for key in ("promoted", "steering_raises"))
  assert "### DiffMean (layer 1)" in open(os.path.join(out, "summary.md")).read()

  before = os.path.getmtime(os.path.join(out, "detection", "DiffMean.json"))
  second = detect(*common, "--methods=DiffMean,Random,PCA")
  assert second.returncode == 0, second.stderr[-2000:]
  assert os.path.getmtime(os.path.join(out, "detection", "DiffMean.json")) == before  # not redone
  assert set(json.load(open(os.path.join(out, "detection.json")))) == {"DiffMean", "Random", "PCA"}

  other = detect(f"--model={tiny_with_tokenizer}", "--layer=2", "--max_concepts=2", f"--output_dir={out}",
                 "--methods=DiffMean")
  assert other.returncode == 2
  assert other.stderr.strip().splitlines()[-1].startswith(f"error: {out} holds a run with other settings (layer")


def test_detect_refuses_bad_input_before_any_work(tmp_path):
  cases = {
      "--methods=DiffMean,Telepathy": "error: unknown method 'Telepathy': choose from DiffMean, PCA, LAT",
      f"--data={tmp_path}": f"error: {tmp_path}",
      "--hparams=ReFT-r1.n_epochs=1": "error: --hparams names ReFT-r1, which is not among --methods",
      "--concept_chunk=0": "error: --concept_chunk must be at least 1, not 0",
      "--memory_budget_gb=-1": "error: --memory_budget_gb must be positive, not -1.0",
  }
  for flag, message in cases.items():
    result = detect(flag, f"--output_dir={tmp_path / 'x'}", timeout=120)
    assert result.returncode == 2, flag
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-500:]
  assert not os.path.exists(tmp_path / "x")


def test_detect_trains_every_gradient_method_and_records_training(tiny_with_tokenizer, tmp_path):
  """LinearProbe, ReFT-r1 and SSV through the CLI: dictionaries, detection reports with each concept's training
  summary, per-step training records, the loss plot and one summary line per method."""
  out = str(tmp_path / "trained")
  result = detect(f"--model={tiny_with_tokenizer}", "--layer=1", "--max_concepts=2", "--max_examples=12",
                  "--methods=LinearProbe,ReFT-r1,SSV", f"--output_dir={out}",
                  "--hparams=LinearProbe.n_epochs=2,ReFT-r1.n_epochs=2,SSV.n_epochs=1", timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  for name, steps in {"LinearProbe": 2 * 1, "ReFT-r1": 2 * 2, "SSV": 1 * 1}.items():
    record = pd.read_parquet(os.path.join(out, "training", f"{name}.parquet"))
    assert len(record) == 2 * steps and np.isfinite(record["loss"]).all()  # 12 examples: 1 or 2 steps per epoch
    report = json.load(open(os.path.join(out, "detection", f"{name}.json")))
    assert [t["concept_id"] for t in report["training"]] == [0, 1]
    assert ("dead_latents" in report) and (("dead_latent" in report["training"][0]) == (name != "LinearProbe"))
    assert re.search(rf"^{name}: final training loss [-\d.e]+ to [-\d.e]+ over 2 concepts", result.stdout, re.M)
    assert not os.path.exists(os.path.join(out, "training", name))  # per-epoch state removed once finished
  assert open(os.path.join(out, "training_loss.png"), "rb").read(4) == b"\x89PNG"
