"""GemmaScope JumpReLU SAEs: loading and its refusals, encoding, feature selection and SAE steering, each checked
against an independent numpy / scikit-learn computation on a synthetic SAE with a planted concept feature."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from axjax.errors import AxjaxError
from axjax.methods import sae as sae_lib
from axjax.model.interventions import InterventionContext

D, F = 64, 512
PLANTED = 137  # the feature whose encoder column is the concept direction
OTHER = 300  # a second concept's feature
KEYS = ("W_enc", "b_enc", "threshold", "W_dec", "b_dec")


def _orthonormal_pair(rng):
  q, _ = np.linalg.qr(rng.normal(size=(D, 2)))
  return q[:, 0].astype(np.float32), q[:, 1].astype(np.float32)


@pytest.fixture(scope="module")
def params():
  """A GemmaScope-layout SAE whose features PLANTED and OTHER read two concept directions u and v; every other
  encoder column is orthogonal to both, so no other feature responds to either concept."""
  rng = np.random.default_rng(0)
  u, v = _orthonormal_pair(rng)
  w_enc = (rng.normal(size=(D, F)) / np.sqrt(D)).astype(np.float32)
  w_enc -= np.outer(u, u @ w_enc) + np.outer(v, v @ w_enc)
  w_enc[:, PLANTED], w_enc[:, OTHER] = u, v
  threshold = rng.uniform(0.05, 0.4, F).astype(np.float32)
  threshold[5] = 1e3  # a dead feature: always 0
  w_dec = rng.normal(size=(F, D)).astype(np.float32)
  w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
  return {"W_enc": w_enc, "b_enc": rng.normal(0, 0.05, F).astype(np.float32), "threshold": threshold,
          "W_dec": w_dec, "b_dec": rng.normal(0, 0.1, D).astype(np.float32), "u": u, "v": v}


def _save_npz(folder, arrays, name="params.npz"):
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, name)
  np.savez(path, **{k: arrays[k] for k in KEYS if k in arrays})
  return path


def _save_safetensors(folder, arrays, metadata=None):
  st = pytest.importorskip("safetensors.numpy")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "sae.safetensors")
  st.save_file({k: np.ascontiguousarray(arrays[k]) for k in KEYS if k in arrays}, path, metadata=metadata)
  return path


@pytest.fixture(scope="module")
def sae(params, tmp_path_factory):
  return sae_lib.load_sae(_save_npz(str(tmp_path_factory.mktemp("npz")), params), D)


def _jump_relu(h, p):
  z = h.astype(np.float64) @ p["W_enc"].astype(np.float64) + p["b_enc"]
  return np.where(z > p["threshold"], np.maximum(z, 0.0), 0.0), z


def _examples(params, n_pos, n_neg, seed, T=12):
  """Activations of n_pos positives (u added at a random third of their tokens) then n_neg negatives, with
  ragged token masks."""
  rng = np.random.default_rng(seed)
  n = n_pos + n_neg
  acts = rng.normal(0, 0.3, size=(n, T, D)).astype(np.float32)
  hot = (rng.random((n_pos, T)) < 0.34) | (np.arange(T) == rng.integers(0, T, n_pos)[:, None])
  acts[:n_pos] += 3.0 * hot[..., None] * params["u"]
  mask = np.arange(T) < rng.integers(T // 2, T + 1, n)[:, None]
  mask[:n_pos] |= hot  # every planted token is scored
  labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
  return acts, mask, labels


def _batches(acts, mask, labels, sizes):
  edges = np.cumsum([0] + list(sizes))
  return [(acts[a:b], mask[a:b], labels[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def test_npz_and_safetensors_load_the_same_float32_arrays(params, tmp_path):
  from_npz = sae_lib.load_sae(_save_npz(str(tmp_path / "npz"), params), D)
  from_st = sae_lib.load_sae(_save_safetensors(str(tmp_path / "st"), params), D)
  from_folder = sae_lib.load_sae(str(tmp_path / "npz"), D)
  for s in (from_npz, from_st, from_folder):
    assert (s.width, s.num_features) == (D, F)
    for key, got in zip(KEYS, (s.w_enc, s.b_enc, s.threshold, s.w_dec, s.b_dec)):
      assert got.dtype == jnp.float32
      np.testing.assert_array_equal(np.asarray(got), params[key])
  assert from_folder.source.endswith("params.npz")


def test_encode_equals_numpy_jump_relu(sae, params):
  h = np.random.default_rng(1).normal(0, 0.5, size=(3, 7, D)).astype(np.float32)
  ref, z = _jump_relu(h, params)
  got = np.asarray(sae_lib.encode(sae, h))
  assert got.shape == (3, 7, F)
  clear = np.abs(z - params["threshold"]) > 1e-4  # entries a float32 rounding could move across the threshold
  np.testing.assert_allclose(got[clear], ref[clear], atol=2e-5)
  assert 0 < (got > 0).mean() < 0.5  # sparse but not dead
  with pytest.raises(AssertionError):
    sae_lib.encode(sae, h[..., :-1])


def test_selection_finds_the_planted_feature(sae, params):
  acts, mask, labels = _examples(params, 40, 40, seed=2)
  stats = sae_lib.feature_stats(sae, _batches(acts, mask, labels, [16, 16, 16, 16, 16]))
  assert sae_lib.max_diff_feature(stats).tolist() == [PLANTED]
  assert sae_lib.max_auc_feature(stats).tolist() == [PLANTED]
  auc = sae_lib.feature_auc(stats)[0]
  assert auc[PLANTED] == 1.0 and np.delete(auc, PLANTED).max() < 0.85
  assert auc[5] == 0.5  # the dead feature ties everywhere
  direction = sae_lib.sae_diffmean_direction(sae, stats)[0]
  diff = sae_lib.mean_difference(stats)[0].astype(np.float64)
  ref = diff @ params["W_dec"]
  np.testing.assert_allclose(direction, ref / np.linalg.norm(ref), atol=1e-5)


def test_statistics_equal_a_direct_numpy_computation(sae, params):
  acts, mask, labels = _examples(params, 9, 11, seed=3)
  stats = sae_lib.feature_stats(sae, [(acts, mask, labels)])
  a, _ = _jump_relu(acts, params)  # [N, T, F]
  token_mean = (a * mask[..., None]).sum(1) / mask.sum(1)[:, None]
  token_max = np.where(mask[..., None], a, 0.0).max(1)
  want = token_mean[labels == 1].mean(0) - token_mean[labels == 0].mean(0)
  np.testing.assert_allclose(sae_lib.mean_difference(stats)[0], want, atol=1e-5)
  np.testing.assert_allclose(stats.example_max, token_max, atol=2e-5)
  assert stats.counts.tolist() == [[11, 9]]


def test_auc_equals_sklearn_feature_by_feature_with_ties(sae, params):
  acts, mask, labels = _examples(params, 13, 17, seed=4)
  stats = sae_lib.feature_stats(sae, [(acts, mask, labels)])
  got = sae_lib.feature_auc(stats)[0]
  assert (stats.example_max == 0).any(axis=0).mean() > 0.3  # many features tie at 0 for some examples
  features = np.r_[5, PLANTED, np.arange(0, F, 3)]  # the dead and planted features, and a third of the rest
  want = [roc_auc_score(labels, stats.example_max[:, f]) for f in features]
  np.testing.assert_allclose(got[features], want, atol=1e-6)
  # small integer scores: ties within and across classes everywhere
  rng = np.random.default_rng(5)
  x = rng.integers(0, 4, size=(25, 40)).astype(np.float32)
  y = rng.integers(0, 2, size=25)
  tied = sae_lib.FeatureStats(np.zeros((1, 2, 40)), np.array([[25 - y.sum(), y.sum()]]), x, y[:, None])
  np.testing.assert_allclose(sae_lib.feature_auc(tied)[0], [roc_auc_score(y, x[:, f]) for f in range(40)],
                             atol=1e-6)


def test_streaming_in_any_batch_sizes_gives_the_same_statistics(sae, params):
  acts, mask, labels = _examples(params, 15, 15, seed=6)
  whole = sae_lib.feature_stats(sae, [(acts, mask, labels)])
  for sizes in ([1] * 30, [7, 1, 20, 2], [29, 1]):
    split = sae_lib.feature_stats(sae, iter(_batches(acts, mask, labels, sizes)))
    np.testing.assert_allclose(split.mean_sums, whole.mean_sums, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(split.counts, whole.counts)
    np.testing.assert_allclose(split.example_max, whole.example_max, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(split.labels, whole.labels)
    np.testing.assert_allclose(sae_lib.feature_auc(split), sae_lib.feature_auc(whole), atol=1e-6)


def test_several_concepts_in_one_pass_with_shared_negatives(sae, params):
  """Concept 0 (u) and concept 1 (v) share the negatives; each concept's positives are -1 for the other."""
  acts, mask, labels = _examples(params, 20, 30, seed=7)
  rng = np.random.default_rng(8)
  v_acts = rng.normal(0, 0.3, size=(20,) + acts.shape[1:]).astype(np.float32)
  v_acts[:, :4] += 3.0 * params["v"]
  v_mask = np.ones(v_acts.shape[:2], bool)
  all_acts, all_mask = np.concatenate([acts, v_acts]), np.concatenate([mask, v_mask])
  multi = np.full((70, 2), -1)
  multi[:50, 0] = labels
  multi[20:50, 1] = 0
  multi[50:, 1] = 1
  stats = sae_lib.feature_stats(sae, _batches(all_acts, all_mask, multi, [25, 25, 20]))
  assert sae_lib.max_diff_feature(stats).tolist() == [PLANTED, OTHER]
  assert sae_lib.max_auc_feature(stats).tolist() == [PLANTED, OTHER]
  rows = multi[:, 1] >= 0
  want = [roc_auc_score(multi[rows, 1], stats.example_max[rows, f]) for f in range(0, F, 7)]
  np.testing.assert_allclose(sae_lib.feature_auc(stats)[1, ::7], want, atol=1e-6)


def _axbench_clamp(h, p, feature, target, at_least):
  """AxBench's DictionaryAdditionIntervention over the full SAE: dec(a') + (h - dec(a))."""
  a, _ = _jump_relu(h, p)
  changed = a.copy()
  changed[..., feature] = np.maximum(a[..., feature], target) if at_least else target
  dec = lambda x: x @ p["W_dec"].astype(np.float64) + p["b_dec"]
  return dec(changed) + (h - dec(a))


@pytest.mark.parametrize("minimum", [False, True])
def test_sae_clamping_equals_axbench_full_reconstruction(sae, params, minimum):
  rng = np.random.default_rng(9)
  h = rng.normal(0, 0.5, size=(3, 6, D)).astype(np.float32)
  h[0, :3] += 2.0 * params["u"]  # feature PLANTED active above some targets: min-clamping keeps it there
  features, targets = np.array([PLANTED, PLANTED, OTHER]), np.array([1.0, 4.0, 2.5], np.float32)
  mask = np.ones((3, 6), bool)
  mask[:, 0] = False  # an unsteered position
  ctx = InterventionContext(jnp.asarray(mask), jnp.broadcast_to(jnp.arange(6), (3, 6)))
  iv = sae_lib.sae_clamping(12, minimum=minimum)
  got = np.asarray(iv.apply(sae_lib.sae_clamping_params(sae, features, targets), jnp.asarray(h), ctx))
  for b in range(3):
    want = _axbench_clamp(h[b], params, features[b], targets[b], minimum)
    np.testing.assert_allclose(got[b, 1:], want[1:], atol=1e-4)
    np.testing.assert_array_equal(got[b, 0], h[b, 0])
    one = iv.apply(sae_lib.sae_clamping_params(sae, int(features[b]), float(targets[b])), jnp.asarray(h[b:b + 1]),
                   InterventionContext(ctx.mask[b:b + 1], ctx.positions[b:b + 1]))
    np.testing.assert_allclose(np.asarray(one)[0], got[b], atol=1e-6)
  assert not np.allclose(got[0, 1:], h[0, 1:])
  assert iv.name == ("sae_min_clamping" if minimum else "sae_clamping") and iv.layer == 12


def test_steering_vector_and_prune(sae, params):
  np.testing.assert_array_equal(np.asarray(sae_lib.steering_vector(sae, PLANTED)), params["W_dec"][PLANTED])
  assert sae_lib.steering_vector(sae, [PLANTED, OTHER]).shape == (2, D)
  pruned = sae_lib.prune(sae, [OTHER, PLANTED])
  h = np.random.default_rng(10).normal(0, 1.0, size=(4, D)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(sae_lib.encode(pruned, h)),
                             np.asarray(sae_lib.encode(sae, h))[:, [OTHER, PLANTED]], atol=1e-5)


def _expect(fragment, fn, *args, **kwargs):
  with pytest.raises(AxjaxError) as e:
    fn(*args, **kwargs)
  assert fragment in str(e.value), str(e.value)


def test_bad_sae_files_are_refused_with_one_sentence(params, tmp_path):
  folder = str(tmp_path)
  _expect("no SAE file at", sae_lib.load_sae, os.path.join(folder, "absent.npz"), D)
  with open(os.path.join(folder, "weights.pt"), "wb") as f:
    f.write(b"torch")
  _expect("is not an SAE file: expected GemmaScope's params.npz or a .safetensors file",
          sae_lib.load_sae, os.path.join(folder, "weights.pt"), D)
  _expect("holds no SAE file", sae_lib.load_sae, folder, D)
  partial = {k: params[k] for k in ("W_enc", "b_enc", "W_dec")}
  _expect("lacks threshold, b_dec", sae_lib.load_sae, _save_npz(folder + "/partial", partial), D)
  _expect("lacks threshold, b_dec", sae_lib.load_sae, _save_safetensors(folder + "/partial_st", partial), D)
  bad = dict(params, b_enc=params["b_enc"][:-1])
  _expect("has inconsistent shapes W_enc [64, 512], b_enc [511]", sae_lib.load_sae,
          _save_npz(folder + "/shape", bad), D)
  bad = dict(params, W_dec=params["W_dec"].T.copy())
  _expect("has inconsistent shapes", sae_lib.load_sae, _save_npz(folder + "/dec", bad), D)
  good = _save_npz(folder + "/good", params)
  _expect(f"the SAE at {good} has width 64 but the model's hidden size is 640", sae_lib.load_sae, good, 640)
  with open(folder + "/junk.npz", "wb") as f:
    f.write(b"not a zip file at all")
  _expect("is not a readable .npz file", sae_lib.load_sae, folder + "/junk.npz", D)
  st_path = _save_safetensors(folder + "/cut", params)
  with open(st_path, "r+b") as f:
    f.truncate(os.path.getsize(st_path) - 100)
  _expect("is truncated", sae_lib.load_sae, st_path, D)


def test_an_sae_for_another_model_is_refused(params, tmp_path):
  st_path = _save_safetensors(str(tmp_path / "st"), params, metadata={"model_name": "gemma-2-2b"})
  _expect("was trained for gemma-2-2b, not for gemma-3-270m", sae_lib.load_sae, st_path, D, model_name="gemma-3-270m")
  assert sae_lib.load_sae(st_path, D, model_name="google/gemma-2-2b").model_name == "gemma-2-2b"
  assert sae_lib.load_sae(st_path, D).model_name == "gemma-2-2b"  # nothing to compare against
  npz_path = _save_npz(str(tmp_path / "npz"), params)
  assert sae_lib.load_sae(npz_path, D, model_name="gemma-3-270m").model_name is None
  with open(tmp_path / "npz" / "sae.json", "w") as f:
    json.dump({"model_name": "google/gemma-2-9b"}, f)
  _expect("was trained for google/gemma-2-9b, not for gemma-2-2b", sae_lib.load_sae, npz_path, D,
          model_name="gemma-2-2b")
  with open(tmp_path / "npz" / "sae.json", "w") as f:
    f.write("{not json")
  _expect("is not valid JSON", sae_lib.load_sae, npz_path, D)


def test_bad_selection_input_is_refused(sae, params):
  acts, mask, labels = _examples(params, 4, 4, seed=11)
  _expect("labels must be 1 (positive), 0 (negative) or -1", sae_lib.feature_stats, sae, [(acts, mask, labels * 2)])
  only_pos = sae_lib.feature_stats(sae, [(acts[:4], mask[:4], labels[:4])])
  _expect("concepts [0] need both positive and negative examples", sae_lib.max_auc_feature, only_pos)
  _expect("concepts [0] need both positive and negative examples", sae_lib.max_diff_feature, only_pos)
  _expect("no training examples", sae_lib.feature_stats, sae, [])
  _expect("SAE features must be integers in [0, 512)", sae_lib.steering_vector, sae, F)
  _expect("SAE features must be integers in [0, 512)", sae_lib.sae_clamping_params, sae, [-1], [1.0])
  with pytest.raises(AssertionError):  # activations of the wrong width
    sae_lib.feature_stats(sae, [(acts[..., :-1], mask, labels)])
