"""FLOP accounting of the gflops benchmark (axjax/benchmarks/achieved_flops.py) on a tiny Gemma 3 shape."""

import functools
import types

import jax
import numpy as np
import pytest

import axjax
from axjax.benchmarks import achieved_flops as af
from axjax.benchmarks import compiled_cost
from axjax.methods.activations import layer_activations

# Vocabulary = one of token_nll's chunks, so the output layer runs no padded vocabulary.
TINY = axjax.PRESETS["gemma-3-270m"].replace(
    vocab_size=compiled_cost._VOCAB_CHUNK, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=2,
    num_kv_heads=1, head_dim=32, sliding_layers=(True, True, True, False), sliding_window=8)
LAYER = 1


@pytest.fixture(scope="module")
def params():
  """Random parameters in axjax's layout, filled on the host (init_params traces flax: slow for a fast test)."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(functools.partial(axjax.init_params, TINY), jax.random.key(0))
  fill = lambda path, a: (np.zeros(a.shape, a.dtype) if "scale" in jax.tree_util.keystr(path)
                          else (0.02 * rng.standard_normal(a.shape)).astype(a.dtype))
  return jax.tree.map(jax.numpy.asarray, jax.tree_util.tree_map_with_path(fill, shapes))


@pytest.fixture(scope="module")
def examples():
  """lm_all-like rows for 2 concepts x 12 examples (2 steps of 6): right-padded, the second half the output."""
  rng = np.random.default_rng(0)
  rows, t = 24, 24
  lengths = rng.integers(6, t - 1, size=rows)
  span = lambda lo, hi: (np.arange(t)[None] >= np.reshape(lo, (-1, 1))) & (np.arange(t)[None] < hi[:, None])
  tokens = np.where(span(0, lengths), rng.integers(2, TINY.vocab_size, (rows, t)), 0).astype(np.int32)
  return types.SimpleNamespace(
      tokens=tokens, attention_mask=span(0, lengths), loss_mask=span(lengths // 2, lengths),
      intervention_mask=span(1, lengths), index=np.arange(rows, dtype=np.int32).reshape(2, 12),
      row_valid=np.ones((2, 12), bool), concept_ids=np.array([0, 1], np.int32))


def test_causal_keys_and_useful_counts():
  assert af.causal_keys(4, 0) == 10 and af.causal_keys(4, 8) == 10
  assert af.causal_keys(10, 3) == 6 + 7 * 3  # queries 0..2 see 1..3 keys, the other 7 see 3
  useful = af.layers_flops(TINY, [0], [5])
  executed = af.layers_flops(TINY, [0], [5], width=8)
  assert useful["matmul"] == 2 * af.layer_weights(TINY) * 5
  assert useful["attention"] == 4 * TINY.num_heads * TINY.head_dim * 15
  assert executed["matmul"] > useful["matmul"] and executed["attention"] > useful["attention"]


@pytest.fixture(scope="module")
def activation(params, examples):
  ex = examples
  out = af.activation_pass(params, TINY, ex.tokens, ex.attention_mask, LAYER, batch_size=4, width_multiple=8,
                           profile_ops=False)
  return out, out.pop("acts")


@pytest.fixture(scope="module")
def step(params, examples, activation):
  return af.reft_step(params, TINY, examples, activation[1], LAYER, 2, steps=1, profile_ops=False)


@pytest.fixture(scope="module")
def decode(params):
  return af.steered_decode(params, TINY, LAYER, batch=2, prompt_length=4, new_tokens=3)


def test_activation_pass_counts_match_xla(params, examples, activation):
  ex = examples
  out, acts = activation
  np.testing.assert_array_equal(acts, layer_activations(params, TINY, ex.tokens, ex.attention_mask, LAYER,
                                                        batch_size=4, width_multiple=8))
  analytic, xla, useful = (out["executed_flops_analytic"]["total"], out["executed_flops_xla"],
                           out["useful_flops"]["total"])
  assert 0.8 < xla / analytic < 1.2  # XLA also counts norms and elementwise work
  assert analytic > useful > 0
  assert out["padded_tokens"] >= out["real_tokens"] == ex.attention_mask.sum()
  pad = out["executed_over_useful_analytic"]
  assert pad["as_run"] >= pad["without_filler_copies"] >= pad["and_exact_widths"] >= 1.0


def test_reft_step_counts_match_xla_and_compiled_cost(step):
  out = step
  executed, useful = out["executed_flops_analytic"], out["useful_flops"]
  assert 0.8 < out["executed_flops_xla"] / executed["total"] < 1.2
  # The same count as compiled_cost's analytic step at these shapes.
  assert executed["total"] == pytest.approx(out["executed_flops_compiled_cost_analytic"]["total"], rel=1e-9)
  assert executed["total"] > useful["total"] > 0 and all(v > 0 for v in useful.values())
  assert len(out["seconds"]) == 1 and out["median_seconds"] > 0


def test_decode_counts():
  lengths = np.array([3, 4])
  flops = af.decode_flops(TINY, lengths, width=4, new_tokens=3)
  assert flops["executed"] > flops["useful"] > 0
  weights = 2.0 * af.layer_weights(TINY) * TINY.num_layers
  # Useful: 7 prompt tokens and 2 kept steps per row through every layer, 2 + 2 x 2 unembeddings.
  assert flops["useful"] > weights * (7 + 4) + 2.0 * TINY.vocab_size * TINY.hidden_size * 6
  nbytes = af.decode_step_bytes(TINY, 2, 7, 4)
  assert nbytes["weights"] == (af.layer_weights(TINY) * TINY.num_layers + TINY.vocab_size * TINY.hidden_size) * 4


def test_ratios_and_table(activation, step, decode):
  peak = af.matmul_peak(shapes=((64, 32, 64), (128, 64, 32)), repeats=2)
  assert peak["gflops"] == max(s["gflops"] for s in peak["per_shape"]) > 0
  act = activation[0]
  af._ratios(act, act["useful_flops"]["total"], act["executed_flops_xla"], peak, peak)
  af._ratios(step, step["useful_flops"]["total"], step["executed_flops_xla"], peak, peak)
  af._ratios(decode, decode["flops"]["useful"], decode["flops"]["executed"], peak, peak)
  for w in (act, step, decode):
    assert w["ratio_to_peak"] > 0 and w["ratio_to_peak_per_cpu_second"] > 0 and w["executed_over_useful"] > 1
  af.decode_roofline(decode, peak["gflops"] * 1e9, 1e10)
  assert decode["bound_on_this_machine"] in ("compute", "memory")
  table = af.format_table({"cores": 2, "load_average_at_start": (1.0, 1.0, 1.0), "load_average_at_end": (1.0, 1.0, 1.0),
                           "activation_pass": act, "train": [step], "decode": decode,
                           "read_bandwidth": {"gbytes_per_s": 10.0}})
  assert "ReFT-r1 step C=2" in table and "steered decoding" in table


def test_profile_split_finds_matmuls():
  x = jax.numpy.ones((256, 256))
  f = jax.jit(lambda a: jax.numpy.tanh(a @ a) + 1.0)
  f(x).block_until_ready()
  hlo = f.lower(x).compile().as_text()
  table = af.hlo_op_table([hlo])
  assert any(i.matmul for i in table.values())
  profile = af.profile_split(lambda: [f(x).block_until_ready() for _ in range(3)], [hlo])
  if "error" in profile:
    pytest.skip(profile["error"])
  assert profile["seconds"].get("outside loops: matmuls", 0) > 0
  assert profile["busy_seconds"] <= profile["wall_seconds"] * 1.01
