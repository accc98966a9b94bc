"""AxBench's BoW detection baseline: per concept, word counts and an L2 logistic regression (scikit-learn).

AxBench (`models/bow.py`) fits, for each concept, a `CountVectorizer` on the chat-formatted input+output texts
of the concept's binarized training examples and a `LogisticRegression(C=100, lbfgs, max_iter=1000)` on the
counts (positives 1, negatives 0). An example's detection score is P(positive): one score per example, not
per token. Steering: none.

In memory the fitted concepts share one sorted vocabulary (the union of theirs) and each concept's coefficients
are a sparse row over it (CSR: `indptr`, `indices`, `coef`), plus an intercept per concept. A word outside a
concept's own vocabulary has no coefficient in its row, which is exactly how that concept's vectorizer ignores
it, so sigmoid(counts @ coef + intercept) over the shared vocabulary equals each concept's `predict_proba`.
A dictionary keeps each concept on its own (`to_extras`: its words as UTF-8 text, its coefficients in that
order, zero-padded), so concept chunks concatenate.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.special import expit
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from axjax.data.examples import BinarizedExamples
from axjax.dictionary.store import text_array, texts_of
from axjax.errors import AxjaxError

EXTRAS = ("vocabulary", "coef", "intercept")


@dataclasses.dataclass(frozen=True)
class BowConfig:
  """AxBench's bow.yaml settings. L2 is scikit-learn's default penalty in every version (spelled penalty='l2'
  before 1.8 and l1_ratio=0 since), so it is left implicit to stay free of deprecation warnings."""

  C: float = 100.0
  max_iter: int = 1000
  seed: int = 42  # AxBench's random_state (its train seed); lbfgs is deterministic and does not draw from it


@dataclasses.dataclass(frozen=True, eq=False)
class BowModel:
  """C fitted concepts over one shared vocabulary; coefficients as CSR rows [C, V] (float64, as scikit-learn)."""

  vocabulary: np.ndarray  # [V] str, sorted
  indptr: np.ndarray  # [C + 1] int64: concept c's coefficients are coef[indptr[c]:indptr[c + 1]]
  indices: np.ndarray  # [nnz] int64 columns of `vocabulary`
  coef: np.ndarray  # [nnz] float64
  intercept: np.ndarray  # [C] float64

  @property
  def num_concepts(self) -> int:
    return self.intercept.shape[0]

  def coef_matrix(self) -> sparse.csr_matrix:
    """The coefficients as a sparse [C, V] matrix."""
    return sparse.csr_matrix((self.coef, self.indices, self.indptr), shape=(self.num_concepts, len(self.vocabulary)))


def _fit_one(texts: Sequence[str], labels: Sequence[int], config: BowConfig
             ) -> tuple[np.ndarray, np.ndarray, float]:
  """One concept's vocabulary (in column order), coefficients and intercept, fitted as AxBench does."""
  y = np.asarray(labels)
  if len(texts) != len(y) or not len(y):
    raise AxjaxError(f"a BoW concept needs one label per text and at least one text, got {len(texts)} texts and "
                     f"{len(y)} labels")
  if not np.isin(y, (0, 1)).all() or len(np.unique(y)) != 2:
    raise AxjaxError("BoW labels must be 0 and 1 with both present: logistic regression needs two classes")
  vectorizer = CountVectorizer()
  try:
    counts = vectorizer.fit_transform(list(texts))
  except ValueError as e:  # scikit-learn's "empty vocabulary" for texts without a single word
    raise AxjaxError(f"BoW found no words to count in a concept's texts ({e})") from None
  classifier = LogisticRegression(C=config.C, solver="lbfgs", max_iter=config.max_iter, random_state=config.seed)
  classifier.fit(counts, y)
  return vectorizer.get_feature_names_out(), classifier.coef_[0], float(classifier.intercept_[0])


def fit(concept_sets: Sequence[tuple[Sequence[str], Sequence[int]]], config: BowConfig = BowConfig()) -> BowModel:
  """Fits one BoW classifier per concept from its (texts, labels) and packs them over a shared vocabulary."""
  if not concept_sets:
    raise AxjaxError("BoW needs at least one concept's (texts, labels) to fit")
  fitted = [_fit_one(texts, labels, config) for texts, labels in concept_sets]
  vocabulary = np.unique(np.concatenate([words for words, _, _ in fitted]))
  columns = [np.searchsorted(vocabulary, words) for words, _, _ in fitted]
  indptr = np.cumsum([0] + [len(c) for c in columns]).astype(np.int64)
  return BowModel(vocabulary=vocabulary.astype(str), indptr=indptr,
                  indices=np.concatenate(columns).astype(np.int64),
                  coef=np.concatenate([coef for _, coef, _ in fitted]).astype(np.float64),
                  intercept=np.array([b for _, _, b in fitted], np.float64))


def concept_sets(examples: BinarizedExamples) -> list[tuple[list[str], list[int]]]:
  """Each concept's (texts, labels) from AxBench-formatted binarized examples, in AxBench's row order."""
  out = []
  for index, labels, valid in zip(examples.index, examples.labels, examples.row_valid):
    out.append(([examples.texts[i] for i in index[valid]], labels[valid].tolist()))
  return out


def fit_examples(examples: BinarizedExamples, config: BowConfig = BowConfig()) -> BowModel:
  """BoW classifiers of every concept of `examples` (see `examples.binarized_examples`)."""
  return fit(concept_sets(examples), config)


def counts(model: BowModel, texts: Sequence[str]) -> sparse.csr_matrix:
  """Word counts [N, V] of `texts` over the model's vocabulary (words outside it are dropped, as scikit-learn's
  fitted vectorizers drop them)."""
  return CountVectorizer(vocabulary=model.vocabulary.tolist()).transform(list(texts))


def scores(model: BowModel, texts: Sequence[str]) -> np.ndarray:
  """P(positive) [N, C] float64 of every text under every concept's classifier: AxBench's example-level score."""
  if isinstance(texts, str):
    raise AxjaxError("texts must be a sequence of strings, not one string")
  logits = np.asarray((counts(model, texts) @ model.coef_matrix().T).todense()) + model.intercept[None, :]
  return expit(logits)


def to_extras(model: BowModel) -> dict[str, np.ndarray]:
  """Per concept: its words joined by newlines (UTF-8 bytes [C, L]), their coefficients [C, V] (float64,
  zero-padded) and its intercept [C]: a dictionary's extras."""
  rows = [slice(model.indptr[c], model.indptr[c + 1]) for c in range(model.num_concepts)]
  coef = np.zeros((model.num_concepts, max(r.stop - r.start for r in rows)), np.float64)
  for c, r in enumerate(rows):
    coef[c, :r.stop - r.start] = model.coef[r]
  words = ["\n".join(model.vocabulary[model.indices[r]]) for r in rows]
  return {"vocabulary": text_array(words), "coef": coef, "intercept": np.asarray(model.intercept, np.float64)}


def from_extras(extras: dict[str, np.ndarray]) -> BowModel:
  """The model `to_extras` stored, checked for consistent shapes."""
  missing = [name for name in EXTRAS if name not in extras]
  if missing:
    raise AxjaxError(f"BoW arrays lack {', '.join(missing)}")
  words = [t.split("\n") if t else [] for t in texts_of(extras["vocabulary"])]
  coef, intercept = np.asarray(extras["coef"], np.float64), np.asarray(extras["intercept"], np.float64)
  if coef.ndim != 2 or intercept.shape != (len(words),) or len(coef) != len(words) or \
      max(map(len, words)) > coef.shape[1]:
    raise AxjaxError("BoW arrays are inconsistent: vocabulary, coef and intercept do not fit")
  vocabulary = np.unique(np.concatenate([np.asarray(w, str) for w in words]))
  columns = [np.searchsorted(vocabulary, w) for w in words]
  return BowModel(vocabulary=vocabulary.astype(str), indptr=np.cumsum([0] + [len(w) for w in words]).astype(np.int64),
                  indices=np.concatenate(columns).astype(np.int64),
                  coef=np.concatenate([coef[c, :len(w)] for c, w in enumerate(words)]), intercept=intercept)


def fit_concepts(name: str, cache, hp: dict, seed: int, progress, checkpoint_dir):
  """The pipeline's BoW fit (`fit.fit_method`): extras of the cache's concepts from their binarized examples;
  nothing is gradient-trained, so there is no record."""
  del name, seed, progress, checkpoint_dir  # lbfgs is deterministic; AxBench's random_state is kept
  examples = cache.tokenised("binarized")
  return to_extras(fit_examples(examples, BowConfig(C=hp["C"], max_iter=hp["max_iter"]))), None, 0


def detection_scores(dictionary, model, ex, layer: int, **_) -> tuple[np.ndarray, bool]:
  """P(positive) [E, C] of every latent-eval text (`LatentEvalExamples`) under every concept: example-level, as
  AxBench; cheap, so the imbalanced pool is scored too (True)."""
  del model, layer
  return scores(from_extras(dictionary.extras), ex.texts), True
