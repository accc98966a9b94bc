"""The concept-chunked detection pipeline: chunk plans, the activation estimate, results that do not depend on
the chunking, resuming a killed run at its first unfinished chunk, and one-pass eval scoring."""

import json
import os

import numpy as np
import pytest

import axjax
from axjax.data.axbench_format import read_axbench
from axjax.errors import AxjaxError
from axjax.methods import concept_chunks, detection_run
from axjax.methods.fit import ActivationCache
from axjax.methods.scoring import example_max_scores

# SSV trains through ReFT-r1's path (the LM loss above layer L): ReFT-r1 stands for both, as each costs a compile.
METHODS = ["DiffMean", "LAT", "Random", "LinearProbe", "ReFT-r1"]
SHORT = {"LinearProbe": {"n_epochs": "1"}, "ReFT-r1": {"n_epochs": "1"}}
CONCEPTS = 4


def test_plan_chunks_fills_the_budget_in_order():
  sizes = np.array([3, 3, 3, 5, 1])
  assert concept_chunks.plan_chunks([10, 11, 12, 13, 14], sizes, budget_bytes=6) == [(10, 11), (12,), (13, 14)]
  assert concept_chunks.plan_chunks([10, 11, 12, 13, 14], sizes, 100, max_size=2) == [(10, 11), (12, 13), (14,)]
  assert concept_chunks.plan_chunks([10, 11], np.array([9, 9]), budget_bytes=1) == [(10,), (11,)]  # 1 at least
  with pytest.raises(AxjaxError, match="at least 1"):
    concept_chunks.plan_chunks([10], sizes[:1], 100, max_size=0)


def test_chunks_are_split_until_every_process_has_one():
  assert concept_chunks.at_least([(1, 2, 3, 4, 5)], 2) == [(1, 2, 3), (4, 5)]
  assert concept_chunks.at_least([(1, 2), (3, 4, 5, 6)], 3) == [(1, 2), (3, 4), (5, 6)]
  assert concept_chunks.at_least([(1, 2)], 4) == [(1,), (2,)]  # no empty chunks
  assert concept_chunks.at_least([(1,), (2,)], 1) == [(1,), (2,)]


@pytest.fixture(scope="module")
def model(tiny_with_tokenizer):
  return axjax.load(tiny_with_tokenizer)


@pytest.fixture(scope="module")
def data():
  return read_axbench("concept10/prod_2b_l20_v1", max_concepts=CONCEPTS)


def new_cache(model, data):
  return ActivationCache(model, data, layer=1, max_examples=8)  # 4 positives and 4 negatives per concept


def test_activation_estimate_bounds_what_a_chunk_holds(model, data):
  ids = [c.concept_id for c in data.concepts]
  cache = new_cache(model, data)
  estimate = concept_chunks.activation_bytes(cache, ["LinearProbe", "ReFT-r1", "SSV"], ids)
  held = sum(cache.examples(kind)[1].nbytes for kind in ("binarized", "lm_all", "lm_positive"))
  assert held <= estimate.sum() <= 3 * held  # an upper bound, and not a wild one
  # DiffMean keeps no activations, only its moments: counts, sums and a d x d scatter per concept in float64.
  d = model.config.hidden_size
  streamed = concept_chunks.activation_bytes(cache, ["DiffMean", "LinearProbe", "ReFT-r1", "SSV"], ids)
  np.testing.assert_array_equal(streamed - estimate, 8 * (2 + 2 * d + d * d))


def run(model, data, out, methods=METHODS, overrides=SHORT, **chunking):
  return detection_run.run_detection(new_cache(model, data), methods, str(out), overrides=overrides, seed=0,
                                     imbalance_factor=None, log=lambda line: None, **chunking)


@pytest.fixture(scope="module")
def whole(model, data, tmp_path_factory):
  return run(model, data, tmp_path_factory.mktemp("whole"))


def test_results_do_not_depend_on_the_chunking(model, data, whole, tmp_path):
  """One concept per chunk equals all in one (chunks of 3 and 1: the killed run below)."""
  reports, dictionaries = run(model, data, tmp_path, max_chunk=1)
  for name in METHODS:
    assert dictionaries[name].concept_ids == whole[1][name].concept_ids == tuple(range(CONCEPTS))
    np.testing.assert_allclose(dictionaries[name].weights, whole[1][name].weights, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(dictionaries[name].max_activations, whole[1][name].max_activations, rtol=1e-4,
                               atol=1e-4, err_msg=name)
    got = [c["roc"]["roc_auc"] for c in reports[name]["concepts"]]
    want = [c["roc"]["roc_auc"] for c in whole[0][name]["concepts"]]
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
  assert not os.path.exists(tmp_path / "chunks")  # merged, then removed
  steps = json.load(open(tmp_path / "detection" / "ReFT-r1.json"))["training"]
  assert [t["concept_id"] for t in steps] == list(range(CONCEPTS))


def test_every_kind_of_method_is_the_same_in_one_concept_chunks(model, data, tmp_path):
  """BoW, IxG, LoRA and PromptSteering keep their own arrays (dictionary extras): one concept per chunk merges to
  what all concepts in one chunk give. (LoReFT trains through LoRA's path, joint == separate in
  test_adapter_training; LoRA is here for its dropout, whose masks once depended on the chunk's padded width.)"""
  methods = ["BoW", "InputXGradients", "LoRA", "PromptSteering"]
  short = {"InputXGradients": {"n_epochs": "2"}, "LoRA": {"n_epochs": "1"}}
  two = read_axbench("concept10/prod_2b_l20_v1", max_concepts=2)
  reports, dictionaries = run(model, two, tmp_path / "whole", methods, short)
  chunked_reports, chunked = run(model, two, tmp_path / "chunked", methods, short, max_chunk=1)
  for name in methods:
    assert chunked[name].concept_ids == dictionaries[name].concept_ids == (0, 1)
    assert set(chunked[name].extras) == set(dictionaries[name].extras), name
    for key, value in dictionaries[name].extras.items():
      if value.dtype.kind == "f":
        np.testing.assert_allclose(chunked[name].extras[key], value, atol=2e-5, err_msg=f"{name}.{key}")
      else:  # texts as UTF-8 bytes (BoW's words, the steering prompts), zero-padded to the longest
        np.testing.assert_array_equal(chunked[name].extras[key], value, err_msg=f"{name}.{key}")
  for name in ("BoW", "InputXGradients"):
    got = [c["roc"]["roc_auc"] for c in chunked_reports[name]["concepts"]]
    np.testing.assert_allclose(got, [c["roc"]["roc_auc"] for c in reports[name]["concepts"]], atol=1e-6)


def test_a_killed_run_resumes_at_its_first_unfinished_chunk(model, data, whole, tmp_path, monkeypatch):
  trained = []
  real = detection_run.fit_method

  def counting(name, cache, **kwargs):
    trained.append((name, cache.concept_ids))
    if name == "ReFT-r1" and cache.concept_ids == (3,):
      raise KeyboardInterrupt  # killed in the second chunk, after its other methods
    return real(name, cache, **kwargs)

  monkeypatch.setattr(detection_run, "fit_method", counting)
  with pytest.raises(KeyboardInterrupt):
    run(model, data, tmp_path, max_chunk=3)
  assert json.load(open(tmp_path / "chunks" / "plan.json")) == [[0, 1, 2], [3]]
  trained.clear()
  monkeypatch.setattr(detection_run, "fit_method", lambda name, cache, **kw: trained.append(
      (name, cache.concept_ids)) or real(name, cache, **kw))
  reports, dictionaries = run(model, data, tmp_path, memory_budget=10**12)  # another budget: the plan is kept
  assert trained == [("ReFT-r1", (3,))]  # only what the kill left undone
  for name in METHODS:
    np.testing.assert_allclose(dictionaries[name].weights, whole[1][name].weights, atol=2e-5, err_msg=name)
    got = [c["roc"]["roc_auc"] for c in reports[name]["concepts"]]
    np.testing.assert_allclose(got, [c["roc"]["roc_auc"] for c in whole[0][name]["concepts"]], atol=1e-6)


def test_one_pass_scores_equal_numpy_on_the_forward_pass(model):
  """Every concept of every dictionary scored in one pass equals numpy on the model's layer-1 states."""
  rng = np.random.default_rng(0)
  lengths = np.array([5, 17, 9, 30, 2, 12])
  mask = np.arange(32)[None] < lengths[:, None]
  tokens = np.where(mask, rng.integers(0, 1000, mask.shape), 0).astype(np.int32)
  score_mask = mask & (np.arange(32)[None] >= 1)
  d = model.config.hidden_size
  weights = rng.normal(size=(5, d)).astype(np.float32)
  biases = rng.normal(size=5).astype(np.float32)
  relu = np.array([True, True, False, False, True])
  floors = np.array([0.0, 2.0, 0.0, 0.0, -1.0], np.float32)  # ReLU columns: JumpReLU thresholds (SAE features)
  got = example_max_scores(model.params, model.config, tokens, mask, score_mask, 1, weights, biases, relu,
                           floors, batch_size=4, width_multiple=8)
  hidden = np.asarray(axjax.forward(model.params, model.config, tokens, mask, stop_after_layer=1).hidden,
                      np.float64)
  z = hidden @ weights.T.astype(np.float64) + biases
  scores = np.where(relu, np.where(z > np.maximum(floors, 0), z, 0), z)
  want = np.where(score_mask[..., None], scores, -np.inf).max(axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
