"""DiffMean and PCA from streamed token moments equal the same statistics computed with numpy in float64 from
every token at once, despite a shared 1e5 offset, out-of-order batches and repeated rows; and a detection
cache gives the same directions whether it streams the moments or reads them from cached activations."""

import types

import numpy as np
import pytest

import axjax
from axjax.data.axbench_format import read_axbench
from axjax.methods import token_moments
from axjax.methods.fit import ActivationCache, fit_method

U, T, D = 14, 7, 12


@pytest.fixture(scope="module")
def synthetic():
  """Three concepts over 14 shared rows (row 13 all padding); rows 10-12 are negatives shared by all."""
  rng = np.random.default_rng(0)
  acts = rng.normal(size=(U, T, D)).astype(np.float32)
  acts[..., 3] += 1e5  # the outlier dimension every token carries
  acts[:4] += 2.0 * rng.normal(size=D).astype(np.float32)  # concept 0's positives lean one way
  lengths = rng.integers(2, T + 1, U)
  score = np.arange(T)[None] < lengths[:, None]
  score[:, 0] = False  # the prefix is never scored
  score[U - 1] = False
  index = np.array([[0, 1, 2, 3, 10, 11, 12], [4, 5, 6, 10, 11, 12, 13], [7, 8, 9, 10, 11, 12, 13]])
  labels = np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
  row_valid = np.ones(index.shape, bool)
  row_valid[1:, -1] = False
  ex = types.SimpleNamespace(concept_ids=np.array([5, 6, 7]), index=index, labels=labels, row_valid=row_valid,
                             score_mask=score)
  return ex, acts


def reference(ex, acts):
  """Per concept from all its tokens at once, float64: DiffMean, and PC1 by SVD signed as scikit-learn."""
  diff, pc = [], []
  for c in range(len(ex.concept_ids)):
    rows = ex.index[c][ex.row_valid[c]]
    labels = ex.labels[c][ex.row_valid[c]]
    tokens = lambda label: np.concatenate([acts[r][ex.score_mask[r]] for r in rows[labels == label]]).astype(
        np.float64)
    d = tokens(1).mean(0) - tokens(0).mean(0)
    diff.append(d / np.linalg.norm(d))
    centred = tokens(1) - tokens(1).mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    pc.append(v * np.sign(v[np.argmax(np.abs(v))]))
  return np.array(diff), np.array(pc)


def test_streamed_moments_equal_all_tokens_at_once(synthetic):
  ex, acts = synthetic
  # Batches in a scrambled order; the last one repeats rows (a partial batch's filler copies).
  order = np.random.default_rng(1).permutation(U)
  batches = [order[:5], order[5:10], np.concatenate([order[10:], order[10:12]])]
  moments = token_moments.accumulate(((rows, acts[rows], ex.score_mask[rows]) for rows in batches),
                                     token_moments.membership(ex, U), D)
  diff, pc = reference(ex, acts)
  np.testing.assert_allclose(token_moments.diffmean(moments), diff, atol=2e-5)
  np.testing.assert_allclose(token_moments.pca(moments), pc, atol=2e-4)
  positives = [sum(ex.score_mask[r].sum() for r in ex.index[c][ex.labels[c] == 1]) for c in range(3)]
  np.testing.assert_array_equal(moments.count[:, 1], positives)


@pytest.fixture(scope="module")
def model(tiny_with_tokenizer):
  return axjax.load(tiny_with_tokenizer)


def test_streaming_and_cached_activations_give_the_same_directions(model):
  data = read_axbench("concept10/prod_2b_l20_v1", max_concepts=3)
  streamed = ActivationCache(model, data, layer=1, max_examples=8)
  cached = ActivationCache(model, data, layer=1, max_examples=8)
  cached.examples("binarized")  # another method (e.g. LAT) already holds the activations
  for name in ("DiffMean", "PCA"):
    a = fit_method(name, streamed).dictionary.weights
    b = fit_method(name, cached).dictionary.weights
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert "binarized" not in streamed._sets  # streaming kept no activations
