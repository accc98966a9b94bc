"""Every method of AxBench's two tables through the CLIs on a tiny model: the detection-only methods (BoW, IG,
IxG, PromptDetection) through `experiments.detect`, the steering-only ones (LoReFT, LoRA, SFT, PromptSteering)
through `experiments.steer`, with their dictionaries, reports and the bad input each refuses."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import axjax
from axjax.dictionary.store import texts_of
from axjax.methods.prompting import FALLBACK, T_PROMPT_STEERING

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module, *flags, timeout=900):
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", *flags], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def test_detection_only_methods(tiny_with_tokenizer, tmp_path):
  out = str(tmp_path / "detect")
  result = run("detect", f"--model={tiny_with_tokenizer}", "--layer=1", "--max_concepts=2", "--max_examples=12",
               "--methods=BoW,IG,IxG,PromptDetection", f"--output_dir={out}",
               "--hparams=IntegratedGradients.n_epochs=1,InputXGradients.n_epochs=1,IntegratedGradients.steps=10,"
               "PromptDetection.max_new_tokens=8")
  assert result.returncode == 0, result.stderr[-3000:]
  reports = json.load(open(os.path.join(out, "detection.json")))
  assert list(reports) == ["BoW", "IntegratedGradients", "InputXGradients", "PromptDetection"]
  # BoW reads the texts alone, so it detects Concept10's concepts whatever the model (AxBench: 0.93 at 2B).
  assert reports["BoW"]["mean"]["roc"]["roc_auc"] > 0.8
  assert "imbalanced_f1" in reports["BoW"]["concepts"][0]  # cheap: the shared pool is scored
  for name in ("IntegratedGradients", "InputXGradients", "PromptDetection"):  # own rows only: no pool
    assert "imbalanced_f1" not in reports[name]["concepts"][0]
    assert all(0.0 <= c["roc"]["roc_auc"] <= 1.0 for c in reports[name]["concepts"])
  heads = axjax.load_dictionary(os.path.join(out, "dictionaries", "IntegratedGradients"), layer=1)
  assert heads.weights is None and heads.extras["w1"].shape == (2, 64, 32) and heads.hyperparameters["steps"] == 10
  assert np.isfinite(heads.max_activations).all()
  rated = axjax.load_dictionary(os.path.join(out, "dictionaries", "PromptDetection"), layer=1)
  assert set(rated.max_activations) <= {-1.0, 0.0, 1.0, 2.0}  # parsed ratings, -1 where the reply has none
  bow = axjax.load_dictionary(os.path.join(out, "dictionaries", "BoW"), layer=1)
  assert bow.max_activations.max() <= 1.0 and set(bow.extras) == {"coef", "intercept", "vocabulary"}
  record = pd.read_parquet(os.path.join(out, "training", "InputXGradients.parquet"))
  assert np.isfinite(record["loss"]).all() and set(record["concept_id"]) == {0, 1}
  summary = open(os.path.join(out, "summary.md")).read()
  assert "| concept | BoW | IntegratedGradients | InputXGradients | PromptDetection |" in summary


def test_steering_only_methods(tiny_with_tokenizer, tmp_path):
  out = tmp_path / "steer"
  result = run("steer", f"--model={tiny_with_tokenizer}", "--layer=1", "--max_concepts=2", "--max_new_tokens=6",
               "--max_examples=12",
               "--methods=PromptSteering,DiffMean,LoReFT,LoRA,SFT", "--factors=0.5,1", "--num_instructions=2",
               "--batch_size=4", f"--output_dir={out}",
               "--hparams=LoReFT.n_epochs=1,LoRA.n_epochs=1,SFT.n_epochs=1,SFT.max_concepts=1,LoReFT.layers=1+3")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = pd.read_parquet(out / "steering" / "rows.parquet")
  count = rows.groupby("method").size().to_dict()
  # Methods without a factor: one row per instruction (SFT on its first concept only); DiffMean: per factor.
  assert count == {"PromptSteering": 2 * 2, "LoReFT": 2 * 2, "LoRA": 2 * 2, "SFT": 1 * 2, "DiffMean": 2 * 2 * 2}
  assert rows[rows["method"] != "DiffMean"]["factor"].isna().all()
  generations = pd.read_parquet(out / "steering" / "generations.parquet")
  assert len(generations) == len(rows) and (generations["generated_tokens"] > 0).all()
  results = json.load(open(out / "results.json"))
  assert results["baseline"] == "PromptSteering"
  assert {row["method"] for row in results["summary"]} == set(count)
  loreft = axjax.load_dictionary(out / "dictionaries" / "LoReFT", layer=1)
  assert loreft.weights is None and loreft.extras["rotation"].shape == (2, 2, 4, 64)
  assert loreft.hyperparameters["layers"] == "1+3"
  lora = axjax.load_dictionary(out / "dictionaries" / "LoRA", layer=1)
  assert lora.hyperparameters["layers"] == "1+2+3" and lora.extras["b"].shape == (2, 3, 4, 64)
  prompt = axjax.load_dictionary(out / "dictionaries" / "PromptSteering", layer=1)
  assert texts_of(prompt.extras["prompt"]) == [T_PROMPT_STEERING % name for name in prompt.concept_names]
  assert texts_of(prompt.extras["prompt_source"]) == [FALLBACK, FALLBACK]
  sft = pd.read_parquet(out / "training" / "SFT" / "0.parquet")
  assert np.isfinite(sft["loss"]).all() and not (out / "training" / "SFT" / "1.parquet").exists()
  report = (out / "report.md").read_text()
  assert "| LoReFT | n/a |" in report  # the detection table lists the steering-only methods as n/a


@pytest.mark.parametrize("flags, message", [
    (["--methods=DiffMean,PromptSteering", "--profile=paper", "--max_concepts=1"],
     "error: PromptSteering needs an LLM to write its steering prompts and the proxy judge has none: pass"),
    (["--methods=LoReFT", "--hparams=LoReFT.layers=1+9"], "error: layer 9 is out of range"),
    (["--methods=SFT", "--hparams=SFT.batch_size=100000000"], "error: SFT needs about"),
    (["--methods=BoW"], "error: none of --methods ['BoW'] steers (they detect only): add a steering method"),
])
def test_steer_refuses_bad_input_in_one_sentence(tiny_with_tokenizer, tmp_path, flags, message):
  out = tmp_path / "refused"
  result = run("steer", f"--model={tiny_with_tokenizer}", "--layer=1", f"--output_dir={out}", *flags, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-1000:]
  assert not out.exists()


def test_detect_refuses_a_steering_only_method(tmp_path):
  result = run("detect", "--methods=DiffMean,LoReFT", f"--output_dir={tmp_path / 'x'}", timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: LoReFT does not detect concepts (AxBench has no detection for it): run it with experiments.steer")
