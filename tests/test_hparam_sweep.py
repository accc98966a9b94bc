"""A hyperparameter sweep inside one compiled step equals separate runs at each grid point."""

import numpy as np
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
