"""An offline stand-in for AxBench's LLM judge, for runs where no judge model is reachable.

Concept and instruction relevance come from static sentence embeddings (WordLlama, shipped inside its PyPI
wheel); fluency from perplexity under the unsteered model, capped by a repetition check because degenerate
loops have LOW perplexity. Each signal maps to 0/1/2 through two thresholds fitted on a hand-labelled set
(`python -m axjax.judges.calibrate_proxy`). It approximates the rubric and is labelled as a proxy in reports.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import re
from typing import Callable, Sequence

import chex
import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from axjax.errors import AxjaxError
from axjax.judges.base import ASPECTS, Progress, RatingRequest

Perplexity = Callable[[Sequence[RatingRequest]], np.ndarray]  # float [N], nan for an empty generation

THRESHOLDS_FILE = os.path.join(os.path.dirname(__file__), "proxy_thresholds.json")
EMBEDDING_NAME = "wordllama-l2-supercat-256"
WINDOW, STRIDE = 16, 8  # generation windows (embedding tokens) for a concept that appears in one passage
SIGNALS = ("concept", "instruction", "neg_log_perplexity", "distinct_trigrams")
# Words AxBench concept descriptions wrap around their subject ("references to ...", "terms related to ...").
DESCRIPTOR_WORDS = frozenset(
    "references reference terms term related relating phrases phrase mentions mention instances instance "
    "statements statement words word content concepts concept elements element patterns pattern aspects "
    "specific various particularly especially associated context contexts involving text forms form "
    "presence notable different usage including".split())
_WORD = re.compile(r"[a-z]+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


class StaticEmbedder:
  """Mean-pooled WordLlama token embeddings (l2_supercat, 256-d), read from the files its wheel ships.

  WordLlama.load() would try to download the tokenizer (it looks under a folder name the wheel does not
  use), so the shipped files are opened by path and the package itself is never imported.
  """

  def __init__(self):
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
      raise AxjaxError("the proxy judge needs the package wordllama (pip install -r requirements.txt)")
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    root = spec.submodule_search_locations[0]
    weights = os.path.join(root, "weights", "l2_supercat_256.safetensors")
    tokenizer = os.path.join(root, "tokenizers", "l2_supercat_tokenizer_config.json")
    if not (os.path.isfile(weights) and os.path.isfile(tokenizer)):
      raise AxjaxError(f"the wordllama package at {root} lacks its shipped l2_supercat weights or tokenizer")
    self.table = load_file(weights)["embedding.weight"].astype(np.float32)
    self.tokenizer = Tokenizer.from_file(tokenizer)
    self.tokenizer.no_padding()
    self.tokenizer.no_truncation()

  def token_vectors(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Per text, its token embeddings [T, D]."""
    return [self.table[e.ids] for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm mean-pooled embeddings [N, D]; zero rows for texts without tokens."""
    pooled = np.zeros((len(texts), self.table.shape[1]), np.float32)
    for i, v in enumerate(self.token_vectors(texts)):
      if len(v):
        pooled[i] = v.mean(0)
    return _unit(pooled)


@functools.lru_cache(maxsize=1)
def shared_embedder() -> StaticEmbedder:
  return StaticEmbedder()


@dataclasses.dataclass(frozen=True)
class Cuts:
  """Two cut points on a signal where higher is better: 0 below `lo`, 1 below `hi`, else 2."""

  lo: float
  hi: float

  def rate(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(np.isnan(x), 0, (x >= self.lo).astype(np.int8) + (x >= self.hi)).astype(np.int8)


@dataclasses.dataclass(frozen=True)
class ProxyThresholds:
  """The fitted cuts: concept and instruction on cosine signals; fluency = min(perplexity, repetition)."""

  concept: Cuts
  instruction: Cuts
  neg_log_perplexity: Cuts
  distinct_trigrams: Cuts
  cap_degenerate_concept: bool  # text rated fluency 0 carries a concept at most "awkwardly" (rating 1)

  @classmethod
  def from_json(cls, data: dict) -> ProxyThresholds:
    cuts = data["thresholds"]
    return cls(*(Cuts(*cuts[name]) for name in SIGNALS), bool(data["cap_degenerate_concept"]))

  def to_json(self) -> dict:
    return {"thresholds": {name: [getattr(self, name).lo, getattr(self, name).hi] for name in SIGNALS},
            "cap_degenerate_concept": self.cap_degenerate_concept}


def load_thresholds(path: str = THRESHOLDS_FILE) -> ProxyThresholds:
  try:
    with open(path) as f:
      return ProxyThresholds.from_json(json.load(f))
  except (OSError, KeyError, TypeError, ValueError) as e:
    raise AxjaxError(f"cannot read proxy-judge thresholds from {path}: {e}") from None


def signals(embedder: StaticEmbedder, requests: Sequence[RatingRequest], perplexity: np.ndarray) -> np.ndarray:
  """float64 [N, 4] in SIGNALS order; nan where a generation has no letters or digits (then rated 0, 0, 0)."""
  perplexity = np.asarray(perplexity, np.float64)
  chex.assert_shape(perplexity, (len(requests),))
  out = np.full((len(requests), len(SIGNALS)), np.nan)
  if not requests:
    return out
  gens = [r.generation for r in requests]
  gen_vecs = embedder.token_vectors(gens)
  gen_doc = embedder.embed(gens)
  concept_doc = embedder.embed([_core(r.concept) for r in requests])
  instruction_doc = embedder.embed([r.instruction for r in requests])
  words = _WordVectors(embedder)
  for i, r in enumerate(requests):
    if not re.search(r"\w", r.generation):
      continue
    window = float(np.max(_windows(gen_vecs[i]) @ concept_doc[i]))
    keywords = words.recall(_content_words(r.concept, DESCRIPTOR_WORDS), _content_words(r.generation))
    out[i, 0] = (gen_doc[i] @ concept_doc[i] + window + keywords) / 3
    out[i, 1] = gen_doc[i] @ instruction_doc[i]
    out[i, 2] = -np.log(perplexity[i])
    out[i, 3] = distinct_trigram_ratio(r.generation)
  return out


def ratings(sig: np.ndarray, thresholds: ProxyThresholds) -> np.ndarray:
  """int8 [N, 3] in ASPECTS order from `signals` output."""
  chex.assert_shape(sig, (None, len(SIGNALS)))
  concept = thresholds.concept.rate(sig[:, 0])
  instruction = thresholds.instruction.rate(sig[:, 1])
  fluency = np.minimum(thresholds.neg_log_perplexity.rate(sig[:, 2]), thresholds.distinct_trigrams.rate(sig[:, 3]))
  if thresholds.cap_degenerate_concept:
    concept = np.where(fluency == 0, np.minimum(concept, 1), concept)
  no_words = np.isnan(sig[:, 3])
  out = np.stack([concept, instruction, fluency], axis=1).astype(np.int8)
  out[no_words] = 0
  return out


def distinct_trigram_ratio(text: str) -> float:
  """Distinct word/symbol trigrams over all trigrams (1.0 below three tokens): low for looping text."""
  tokens = _TOKEN.findall(text.lower())
  grams = list(zip(tokens, tokens[1:], tokens[2:]))
  return len(set(grams)) / len(grams) if grams else 1.0


def unsteered_perplexity(model, chat: bool = True, **kw) -> Perplexity:
  """Perplexity of each generation after its instruction under `model` (a LoadedModel), as `ProxyJudge` needs."""
  from axjax.evaluation.perplexity import text_perplexity

  return lambda reqs: text_perplexity(model, [r.instruction for r in reqs], [r.generation for r in reqs],
                                      chat=chat, **kw)


class ProxyJudge:
  """Judge protocol (axjax.judges.base) from embeddings, perplexity and repetition; no network, no LLM."""

  name = f"proxy:{EMBEDDING_NAME}-ppl-v1"
  is_proxy = True

  def __init__(self, perplexity: Perplexity, thresholds: ProxyThresholds | None = None, chunk: int = 256):
    self.perplexity = perplexity
    self.thresholds = thresholds or load_thresholds()
    self.chunk = chunk
    self.rated = 0

  def check(self) -> None:
    shared_embedder()

  def rate(self, requests: Sequence[RatingRequest], progress: Progress | None = None) -> np.ndarray:
    embedder = shared_embedder()
    out = np.zeros((len(requests), len(ASPECTS)), np.int8)
    for start in range(0, len(requests), self.chunk):
      part = list(requests[start:start + self.chunk])
      ppl = np.asarray(self.perplexity(part), np.float64)
      out[start:start + len(part)] = ratings(signals(embedder, part, ppl), self.thresholds)
      self.rated += len(part)
      if progress is not None:
        progress(start + len(part), len(requests))
    return out

  def usage(self) -> dict[str, int]:
    return {"rated": self.rated}


class _WordVectors:
  """Embeddings of single words, cached for one rating call (generations share most of their words)."""

  def __init__(self, embedder: StaticEmbedder):
    self.embedder = embedder
    self.cache: dict[str, np.ndarray] = {}

  def __call__(self, words: Sequence[str]) -> np.ndarray:
    new = [w for w in dict.fromkeys(words) if w not in self.cache]
    if new:
      self.cache.update(zip(new, self.embedder.embed(new)))
    return np.stack([self.cache[w] for w in words])

  def recall(self, keywords: Sequence[str], words: Sequence[str]) -> float:
    """Mean over keywords of the best cosine with any word: a soft keyword overlap."""
    if not keywords or not words:
      return 0.0
    return float(np.mean(np.max(self(keywords) @ self(words).T, axis=1)))


def _content_words(text: str, drop: frozenset[str] = frozenset()) -> list[str]:
  """Distinct lower-case words that are neither stop words nor in `drop`, in order of appearance."""
  found = (w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in ENGLISH_STOP_WORDS and w not in drop)
  return list(dict.fromkeys(found))


def _core(concept: str) -> str:
  """The concept description without its descriptor words, or the whole description if nothing is left."""
  return " ".join(_content_words(concept, DESCRIPTOR_WORDS)) or concept


def _windows(vectors: np.ndarray) -> np.ndarray:
  """Unit-norm means of WINDOW-token windows every STRIDE tokens and at the end [W, D] (one for short texts)."""
  if len(vectors) <= WINDOW:
    return _unit(vectors.mean(0, keepdims=True))
  csum = np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), np.cumsum(vectors, axis=0)])
  starts = np.unique(np.append(np.arange(0, len(vectors) - WINDOW, STRIDE), len(vectors) - WINDOW))
  return _unit((csum[starts + WINDOW] - csum[starts]) / WINDOW)


def _unit(x: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
