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
  got = np.asarray(closed_form.lat(acts, valid, labels, jax.random.key(3)))
  again = np.asarray(closed_form.lat(acts, valid, labels, jax.random.key(3)))
  np.testing.assert_array_equal(got, again)
  assert np.abs(got - np.asarray(closed_form.lat(acts, valid, labels, jax.random.key(4)))).max() > 0
  # Independent check for one concept: redo the pairing with the same permutation, then sklearn's PCA.
  c = 0
  weights = (valid & (labels == 1)).astype(np.float32)
  keys = jax.random.split(jax.random.key(3), C)
  order = np.argsort(np.where(weights[c] > 0, np.asarray(jax.random.uniform(keys[c], (M,))), 2.0))
  n = int(weights[c].sum())
  x = acts[c].astype(np.float64)
  diffs = x[order[: n // 2]] - x[order[n // 2: 2 * (n // 2)]]
  diffs /= np.linalg.norm(diffs, axis=1, keepdims=True)
  ref = sklearn.PCA(n_components=2).fit(diffs).components_[0]
  np.testing.assert_allclose(got[c], ref / np.linalg.norm(ref), atol=1e-4)


def test_random_directions_are_unit_and_seeded():
  a, b = closed_form.random_directions(4, D, seed=1), closed_form.random_directions(4, D, seed=1)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
  assert np.abs(a - closed_form.random_directions(4, D, seed=2)).max() > 0
