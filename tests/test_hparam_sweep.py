"""A hyperparameter sweep inside one compiled step equals separate runs at each grid point; the detection CLI
reports every point and picks each concept's on training loss."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import axjax
from axjax.data.axbench_format import read_axbench
from axjax.methods.fit import ActivationCache, fit_method, fit_sweep

GRIDS = {
    "ReFT-r1": [{"lr": 0.005}, {}, {"lr": 0.04, "coeff_latent_l1_loss": 0.5}],  # {}: AxBench's values
    "LinearProbe": [{"lr": 0.0005}, {"lr": 0.01, "coeff_l1_loss": 0.01}, {}],
}


@pytest.fixture(scope="module")
def cache(tiny_with_tokenizer):
  model = axjax.load(tiny_with_tokenizer)
  return ActivationCache(model, read_axbench("concept10/prod_2b_l20_v1", max_concepts=2), layer=1, max_examples=12)


@pytest.mark.parametrize("name", ["ReFT-r1", "LinearProbe"])
def test_a_three_point_sweep_equals_three_separate_runs(cache, name):
  short = {"n_epochs": 2}
  swept = fit_sweep(name, cache, GRIDS[name], overrides=short)
  assert len(swept) == 3
  for point, result in zip(GRIDS[name], swept):
    alone = fit_method(name, cache, overrides={**short, **point})
    np.testing.assert_allclose(result.dictionary.weights, alone.dictionary.weights, rtol=1e-5, atol=1e-6,
                               err_msg=str(point))
    np.testing.assert_allclose(result.record["loss"], alone.record["loss"], rtol=1e-5, atol=1e-6)
    assert all(result.dictionary.hyperparameters[k] == v for k, v in point.items())
  assert np.abs(swept[0].dictionary.weights - swept[2].dictionary.weights).max() > 1e-3  # the points differ


def test_only_sweepable_hyperparameters_are_accepted(cache):
  with pytest.raises(axjax.AxjaxError, match="ReFT-r1.topk cannot be swept inside one training step"):
    fit_sweep("ReFT-r1", cache, [{"topk": 4}])
  with pytest.raises(axjax.AxjaxError, match="DiffMean is not trained by gradient descent"):
    fit_sweep("DiffMean", cache, [{"lr": 0.1}])


def test_detect_reports_every_grid_point_and_picks_per_concept_on_training_loss(tiny_with_tokenizer, tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.detect", f"--model={tiny_with_tokenizer}", "--layer=1", "--max_concepts=2",
       "--max_examples=8", "--methods=SSV", "--hparams=SSV.n_epochs=1", "--sweep=SSV.lr=0.001,0.2",
       "--concept_chunk=1", f"--output_dir={out}"], cwd=repo, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  labels = ["SSV@lr=0.001", "SSV@lr=0.2"]
  assert list(json.load(open(out / "detection.json"))) == ["SSV"] + labels
  best = axjax.load_dictionary(str(out / "dictionaries" / "SSV"))
  points = {label: axjax.load_dictionary(str(out / "dictionaries" / label)) for label in labels}
  chosen = best.hyperparameters["sweep_selected"]
  assert len(chosen) == 2 and set(chosen) <= set(labels)
  for c, label in enumerate(chosen):  # each concept's weights are those of its chosen point, chunks merged
    np.testing.assert_array_equal(best.weights[c], points[label].weights[c])
  records = {label: pd.read_parquet(out / "training" / f"{label}.parquet") for label in labels}
  for c, cid in enumerate(best.concept_ids):
    last = {label: r[(r["concept_id"] == cid) & (r["epoch"] == r["epoch"].max())]["lm"].mean()
            for label, r in records.items()}
    assert chosen[c] == min(last, key=last.get)  # the lower last-epoch LM loss
