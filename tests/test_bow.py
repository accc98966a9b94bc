"""BoW scores equal scikit-learn pipelines built separately, and a numpy computation from the saved arrays."""

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from axjax.data.examples import BinarizedExamples
from axjax.dictionary import Dictionary, load_dictionary, save_dictionary
from axjax.errors import AxjaxError
from axjax.methods import bow

TOPICS = (("ocean", "river", "fish"), ("code", "python", "rust"), ("music", "song", "drum"))
WORDS = "alpha beta gamma delta mountain forest java cat dog bird guitar table lamp chair".split()  # in no topic


def chat(user: str, model: str) -> str:
  """A text shaped like AxBench's binarized training texts (Gemma's turns, generation prompt left on)."""
  return f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n{model}<end_of_turn>\n<start_of_turn>"


def concept_texts(rng: np.random.Generator, topic, n: int) -> tuple[list[str], list[int]]:
  texts, labels = [], []
  for i in range(n):
    positive = i % 2 == 0
    words = list(rng.choice(WORDS, 8))
    if positive:
      words += list(rng.choice(topic, 3))
    texts.append(chat(" ".join(rng.choice(WORDS, 4)), " ".join(rng.permutation(words))))
    labels.append(int(positive))
  return texts, labels


@pytest.fixture(scope="module")
def fitted():
  rng = np.random.default_rng(0)
  sets = [concept_texts(rng, topic, 24 + 6 * c) for c, topic in enumerate(TOPICS)]
  probe = [chat("tell me about the ocean", "fish swim in the river and the OCEAN"),
           chat("write code", "python and rust code; an unseenword here"), chat("", "nothing known: zzz qqq")]
  probe += concept_texts(rng, TOPICS[0], 6)[0]
  return sets, bow.fit(sets), probe


def test_scores_equal_separate_sklearn_pipelines(fitted):
  sets, model, probe = fitted
  got = bow.scores(model, probe)
  assert got.shape == (len(probe), len(TOPICS)) and got.dtype == np.float64
  for c, (texts, labels) in enumerate(sets):
    vectorizer = CountVectorizer()
    classifier = LogisticRegression(C=100, solver="lbfgs", max_iter=1000).fit(vectorizer.fit_transform(texts), labels)
    ref = classifier.predict_proba(vectorizer.transform(probe))[:, 1]
    np.testing.assert_allclose(got[:, c], ref, rtol=1e-12, atol=1e-12)
  assert got[0, 0] > 0.5 and got[1, 1] > 0.5  # the topics are learnable


def test_scores_equal_numpy_from_a_saved_dictionary(fitted, tmp_path):
  """The extras saved in a dictionary (Orbax) give the same scores; numpy reads them word by word."""
  _, model, probe = fitted
  extras = bow.to_extras(model)
  c = len(extras["intercept"])
  path = str(tmp_path / "bow")
  save_dictionary(path, Dictionary(weights=None, biases=None, concept_ids=tuple(range(c)),
                                   concept_names=tuple(f"c{i}" for i in range(c)), method="BoW", model_name="m",
                                   layer=0, extras=extras, width=8))
  loaded = load_dictionary(path).extras
  tokenize = CountVectorizer().build_analyzer()
  ref = np.zeros((len(probe), c))
  for concept in range(c):
    words = bytes(loaded["vocabulary"][concept]).rstrip(b"\0").decode().split("\n")
    weight = dict(zip(words, loaded["coef"][concept]))
    for n, text in enumerate(probe):
      logit = sum(weight.get(w, 0.0) for w in tokenize(text)) + loaded["intercept"][concept]
      ref[n, concept] = 1.0 / (1.0 + np.exp(-logit))
  np.testing.assert_allclose(bow.scores(model, probe), ref, rtol=1e-12, atol=1e-12)
  round_trip = bow.from_extras(loaded)
  np.testing.assert_array_equal(bow.scores(round_trip, probe), bow.scores(model, probe))
  for name in ("vocabulary", "indptr", "indices", "coef", "intercept"):
    np.testing.assert_array_equal(getattr(round_trip, name), getattr(model, name))


def test_fit_examples_takes_each_concepts_rows():
  rng = np.random.default_rng(1)
  texts_a, labels_a = concept_texts(rng, TOPICS[0], 10)
  texts_b, labels_b = concept_texts(rng, TOPICS[1], 8)
  shared = tuple(texts_a + texts_b) + ("",)
  pad = len(shared) - 1
  index = np.array([list(range(10)), list(range(10, 18)) + [pad, pad]], np.int32)
  labels = np.array([labels_a, labels_b + [0, 0]], np.int32)
  valid = np.array([[True] * 10, [True] * 8 + [False] * 2])
  empty = np.zeros((len(shared), 4), bool)
  examples = BinarizedExamples(concept_ids=np.array([3, 7], np.int32), index=index, labels=labels, row_valid=valid,
                               texts=shared, tokens=np.zeros((len(shared), 4), np.int32), attention_mask=empty,
                               score_mask=empty, probe_mask=empty, prefix_length=1)
  assert bow.concept_sets(examples) == [(texts_a, labels_a), (texts_b, labels_b)]
  probe = texts_a[:3] + texts_b[:3]
  np.testing.assert_array_equal(bow.scores(bow.fit_examples(examples), probe),
                                bow.scores(bow.fit([(texts_a, labels_a), (texts_b, labels_b)]), probe))


def test_bad_input_raises_one_clear_error(fitted):
  _, model, _ = fitted
  with pytest.raises(AxjaxError, match="two classes"):
    bow.fit([(["a text", "another text"], [1, 1])])
  with pytest.raises(AxjaxError, match="one label per text"):
    bow.fit([(["a text", "another text"], [1])])
  with pytest.raises(AxjaxError, match="no words"):
    bow.fit([(["!", "?"], [1, 0])])
  with pytest.raises(AxjaxError, match="at least one concept"):
    bow.fit([])
  with pytest.raises(AxjaxError, match="not one string"):
    bow.scores(model, "a single text")
  arrays = bow.to_extras(model)
  with pytest.raises(AxjaxError, match="lack coef"):
    bow.from_extras({k: v for k, v in arrays.items() if k != "coef"})
  with pytest.raises(AxjaxError, match="inconsistent"):
    bow.from_extras({**arrays, "intercept": arrays["intercept"][:-1]})
