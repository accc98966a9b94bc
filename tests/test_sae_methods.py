"""SAE-A and SAE-MaxDiff through `experiments.detect`: a synthetic SAE in GemmaScope's layout, with one planted
feature per concept along its DiffMean direction among features that never fire, must have those features
chosen, scored with their JumpReLU and steered with their decoder rows."""

import json
import os

import numpy as np
import pytest

import axjax
from axjax.data.axbench_format import read_axbench
from axjax.data.examples import latent_eval_examples
from axjax.methods.fit import ActivationCache, fit_method
from axjax.methods.scoring import token_scores
from tests.test_detect_cli import detect

LAYER, PLANTED, FEATURES = 1, (5, 30), 48
COMMON = ["--layer=1", "--max_concepts=2", "--max_examples=12"]


def test_token_scores_cut_relu_columns_at_their_floor():
  """Linear columns h.w + b; ReLU columns z = h.w + b kept where z > max(floor, 0): numpy, column by column."""
  rng = np.random.default_rng(0)
  acts, weights, biases = rng.normal(size=(4, 16, 4)), rng.normal(size=(3, 4)), rng.normal(size=3) * 0.1
  relu, floors = np.array([False, True, True]), np.array([0.0, 0.0, 0.4])
  got = np.asarray(token_scores(acts.astype(np.float32), weights.astype(np.float32), biases.astype(np.float32),
                                relu, floors.astype(np.float32)))
  z = acts @ weights.T + biases
  np.testing.assert_allclose(got[..., 0], z[..., 0], rtol=1e-5)
  np.testing.assert_allclose(got[..., 1], np.maximum(z[..., 1], 0), rtol=1e-5)
  np.testing.assert_allclose(got[..., 2], np.where(z[..., 2] > 0.4, z[..., 2], 0), rtol=1e-5)
  assert ((z[..., 2] > 0) & (z[..., 2] <= 0.4)).any()  # the floor really cuts something here


@pytest.fixture(scope="module")
def planted_sae(tiny_with_tokenizer, tmp_path_factory):
  """params.npz: features that never fire (bias -1e3), but for PLANTED[c] = concept c's DiffMean direction."""
  model = axjax.load(tiny_with_tokenizer)
  data = read_axbench("concept10/prod_2b_l20_v1", max_concepts=2)
  cache = ActivationCache(model, data, LAYER, max_examples=12)
  directions = fit_method("DiffMean", cache).dictionary.weights
  rng = np.random.default_rng(1)
  d = model.config.hidden_size
  w_enc = rng.normal(size=(d, FEATURES)).astype(np.float32) * 0.01
  b_enc = np.full(FEATURES, -1e3, np.float32)
  threshold = np.full(FEATURES, 0.05, np.float32)
  for concept, feature in enumerate(PLANTED):
    w_enc[:, feature], b_enc[feature] = directions[concept], 0.0
  arrays = dict(W_enc=w_enc, b_enc=b_enc, threshold=threshold, W_dec=rng.normal(size=(FEATURES, d)).astype(np.float32),
                b_dec=np.zeros(d, np.float32))
  path = tmp_path_factory.mktemp("sae") / "params.npz"
  np.savez(path, **arrays)
  return str(path), arrays, model, data


def test_sae_methods_find_the_planted_features(planted_sae, tiny_with_tokenizer, tmp_path):
  path, arrays, model, data = planted_sae
  out = str(tmp_path / "run")
  result = detect(f"--model={tiny_with_tokenizer}", *COMMON, "--methods=SAE-A,GemmaScopeSAEMaxDiff",
                  f"--sae_path={path}", f"--output_dir={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert set(json.load(open(os.path.join(out, "detection.json")))) == {"SAE-A", "SAE-MaxDiff"}
  ex = latent_eval_examples(data, model.tokenizer)
  acts = np.asarray(axjax.forward(model.params, model.config, ex.tokens, ex.attention_mask,
                                 stop_after_layer=LAYER).hidden, np.float64)
  for name in ("SAE-A", "SAE-MaxDiff"):
    d = axjax.load_dictionary(os.path.join(out, "dictionaries", name), layer=LAYER)
    features = list(PLANTED)
    assert d.extras["feature"].tolist() == features, name
    np.testing.assert_array_equal(d.weights, arrays["W_enc"][:, features].T)
    np.testing.assert_array_equal(d.steering_vectors(), arrays["W_dec"][features])
    np.testing.assert_array_equal(d.extras["jump_threshold"], arrays["threshold"][features])
    # Each concept's max activation: GemmaScope's JumpReLU of its feature at the scored tokens of its own eval
    # rows, computed here in numpy from the layer activations.
    for column, concept in enumerate(d.concept_ids):
      rows = ex.concept_ids == concept
      z = acts[rows] @ arrays["W_enc"][:, features[column]] + arrays["b_enc"][features[column]]
      jump = np.where(z > arrays["threshold"][features[column]], z, 0.0)
      expected = np.where(ex.score_mask[rows], jump, -np.inf).max()
      np.testing.assert_allclose(d.max_activations[column], np.round(expected, 3), rtol=1e-4, atol=2e-3)


def test_sae_flags_are_refused_in_one_sentence(planted_sae, tiny_with_tokenizer, tmp_path):
  path, arrays, _, _ = planted_sae
  narrow = tmp_path / "narrow.npz"
  np.savez(narrow, **{k: (v[:32] if k in ("W_enc", "b_dec") else v[:, :32] if k == "W_dec" else v)
                      for k, v in arrays.items()})
  cases = {
      ("--methods=SAE-A",): "error: SAE-A selects features of a GemmaScope SAE: pass --sae_path",
      ("--methods=DiffMean", f"--sae_path={path}"): "error: --sae_path is given but no method reads it",
      ("--methods=SAE-A", f"--sae_path={narrow}"): "error: the SAE at",
  }
  for flags, message in cases.items():
    result = detect(f"--model={tiny_with_tokenizer}", *COMMON, *flags, f"--output_dir={tmp_path / 'x'}",
                    timeout=300)
    assert result.returncode == 2, flags
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-500:]
  assert not os.path.exists(tmp_path / "x")
