"""Closed-form concept directions equal independent numpy / scikit-learn computations."""

import jax
import numpy as np
import pytest

from axjax.methods import closed_form

C, M, D = 3, 60, 8


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  acts = rng.normal(size=(C, M, D)).astype(np.float32) * np.linspace(0.5, 3.0, D).astype(np.float32)
  acts[:, :, 0] += 1e5  # a large shared offset, like the outlier dimensions of real residual streams
  valid = rng.random((C, M)) < 0.8
  labels = (rng.random((C, M)) < 0.5).astype(np.int32)
  for c in range(C):  # positives of each concept shifted along a concept-specific amount
    acts[c][labels[c] == 1, 1] += 2.0 * (c + 1)
  return acts, valid, labels


def test_diffmean_is_the_difference_of_token_means(batch):
  acts, valid, labels = batch
  got = np.asarray(closed_form.diffmean(acts, valid, labels))
  for c in range(C):
    a = acts[c].astype(np.float64)
    w = a[valid[c] & (labels[c] == 1)].mean(0) - a[valid[c] & (labels[c] != 1)].mean(0)
    np.testing.assert_allclose(got[c], w / np.linalg.norm(w), atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_pca_matches_sklearn_including_sign(batch):
  sklearn = pytest.importorskip("sklearn.decomposition")
  acts, valid, labels = batch
  got = np.asarray(closed_form.pca(acts, valid, labels))
  for c in range(C):
    ref = sklearn.PCA(n_components=2).fit(acts[c][valid[c] & (labels[c] == 1)].astype(np.float64)).components_[0]
    np.testing.assert_allclose(got[c], ref / np.linalg.norm(ref), atol=1e-4)


def test_lat_is_pca_of_normalised_pair_differences(batch):
  sklearn = pytest.importorskip("sklearn.decomposition")
  acts, valid, labels = batch
  keys = closed_form.concept_keys(3, np.arange(C))
  got = np.asarray(closed_form.lat(acts, valid, labels, keys))
  again = np.asarray(closed_form.lat(acts, valid, labels, keys))
  np.testing.assert_array_equal(got, again)
  other = np.asarray(closed_form.lat(acts, valid, labels, closed_form.concept_keys(4, np.arange(C))))
  assert np.abs(got - other).max() > 0
  # Independent check for one concept: redo the pairing with the same permutation, then sklearn's PCA.
  c = 0
  weights = (valid & (labels == 1)).astype(np.float32)
  order = np.argsort(np.where(weights[c] > 0, np.asarray(jax.random.uniform(keys[c], (M,))), 2.0))
  n = int(weights[c].sum())
  x = acts[c].astype(np.float64)
  diffs = x[order[: n // 2]] - x[order[n // 2: 2 * (n // 2)]]
  diffs /= np.linalg.norm(diffs, axis=1, keepdims=True)
  ref = sklearn.PCA(n_components=2).fit(diffs).components_[0]
  np.testing.assert_allclose(got[c], ref / np.linalg.norm(ref), atol=1e-4)


def test_random_directions_are_unit_seeded_and_per_concept():
  a, b = closed_form.random_directions([0, 1, 2, 3], D, seed=1), closed_form.random_directions([0, 1, 2, 3], D, seed=1)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
  assert np.abs(a - closed_form.random_directions([0, 1, 2, 3], D, seed=2)).max() > 0
  np.testing.assert_array_equal(closed_form.random_directions([2, 3], D, seed=1), a[2:])  # chunks agree


def test_layer_activations_equal_the_forward_pass(tiny_gemma3):
  """Length-sorted, width-trimmed batches give the same residual stream as one full forward."""
  import axjax
  from axjax.methods.activations import layer_activations
  lm = axjax.load(tiny_gemma3[1])
  rng = np.random.default_rng(0)
  lengths = np.array([3, 17, 9, 30, 1, 12, 25])
  mask = np.arange(32)[None] < lengths[:, None]
  tokens = np.where(mask, rng.integers(0, 128, mask.shape), 0).astype(np.int32)
  got = layer_activations(lm.params, lm.config, tokens, mask, layer=2, batch_size=3, width_multiple=8)
  want = np.asarray(axjax.forward(lm.params, lm.config, tokens, mask, stop_after_layer=2).hidden)
  np.testing.assert_allclose(got[mask], want[mask], rtol=1e-5, atol=1e-5)
