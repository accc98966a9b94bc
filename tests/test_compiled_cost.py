"""The compiled-cost prediction of ReFT-r1's joint step, on a tiny Gemma 2 shape (abstract: nothing is allocated)."""

import jax.numpy as jnp
import pytest

import axjax
from axjax.benchmarks import compiled_cost

TINY = axjax.PRESETS["gemma-2-2b"].replace(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=3,
                                           num_heads=2, num_kv_heads=1, head_dim=32,
                                           sliding_layers=(True, False, True), sliding_window=8)


@pytest.fixture(scope="module")
def result():
  shape = compiled_cost.StepShape(TINY, layer=0, batch=2, length=16, loss_positions=8, dtype=jnp.float32,
                                  examples_per_concept=8)
  # Unoptimised machine code compiles faster; the HLO and its analyses are the same.
  return compiled_cost.predict(shape, concepts=(1, 2), remats=(True,), budget_bytes=1e8,
                               compiler_options={"xla_backend_optimization_level": 0})


def test_flops_grow_with_concepts_and_match_the_analytic_count(result):
  one, two = result["points"]
  assert (one["concepts"], two["concepts"]) == (1, 2)
  assert two["flops"] > 1.8 * one["flops"] > 0
  assert two["bytes_accessed"] > one["bytes_accessed"] > 0
  for p in (one, two):
    # Unrolling the scans makes XLA count every layer: at least what the rolled program's analysis sees.
    assert p["flops"] > p["flops_rolled"]
    assert 0.9 < p["flops"] / p["analytic_flops"]["total"] < 1.3
    assert p["arithmetic_intensity"] == pytest.approx(p["flops"] / p["bytes_accessed"])
    assert p["predicted_step_seconds"] >= p["flops"] / result["peak_flops"]


def test_fitted_chunk_is_the_largest_that_fits(result):
  fit = result["memory_fit"]["remat"]
  points = result["points"]
  a, b = fit["a_bytes"], fit["b_bytes_per_concept"]
  assert b > 0 and fit["max_relative_residual"] < 1e-6  # two points: the line passes through both
  for p in points:
    assert a + b * p["concepts"] == pytest.approx(p["memory"]["total"], rel=1e-6)
  chunk, budget = fit["largest_chunk"], result["budget_bytes"]
  assert chunk >= 2 and a + b * chunk <= budget < a + b * (chunk + 1)
  # Holding each concept's whole activation cache costs more per concept, so fewer concepts fit.
  assert fit["b_bytes_per_concept_with_cache"] > b
  assert fit["largest_chunk_with_cache"] <= chunk
  assert "PREDICTION" in result["label"] and "predict" in compiled_cost.format_table(result)


def test_largest_chunk_edges():
  assert compiled_cost.largest_chunk(10.0, 2.0, 15.0) == 2
  assert compiled_cost.largest_chunk(20.0, 2.0, 15.0) == 0
