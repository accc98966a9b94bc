"""`python -m experiments.detect`: end to end on a tiny model, resumable, refusing bad input in one sentence."""

import json
import os
import subprocess
import sys

import numpy as np

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
  }
  for flag, message in cases.items():
    result = detect(flag, f"--output_dir={tmp_path / 'x'}", timeout=120)
    assert result.returncode == 2, flag
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-500:]
  assert not os.path.exists(tmp_path / "x")
