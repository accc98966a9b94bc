"""Concept chunks that fit a memory budget: the unit in which the detection pipeline holds activations.

A chunk's layer-L activations (every example set its methods keep, in the model's dtype) and DiffMean/PCA
moments are what a run holds at once on the host; chunks run one after another, so peak memory stays flat as
the concept count grows.
The estimate is an upper bound per concept: its own rows (shared negatives counted for every concept that
uses them) at the width of its longest row.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from axjax.errors import AxjaxError
from axjax.methods.fit import ActivationCache, example_set
from axjax.methods.own_responses import RESPONSE_TOKENS
from axjax.methods.registry import method

_TEMPLATE_TOKENS = 16  # chat-template tokens around an input and output (Gemma's take 9), plus the pad


def activation_bytes(cache: ActivationCache, methods: Sequence[str], concept_ids: Sequence[int]) -> np.ndarray:
  """[C] upper bound on the bytes of layer-L activations (and DiffMean/PCA moments) each concept adds to a
  chunk training `methods`."""
  data, tok = cache.data, cache.model.tokenizer
  row_bytes = cache.model.config.hidden_size * np.dtype(cache.model.params["embed"].dtype).itemsize
  sets = {example_set(m) for m in methods} - {None}
  per_concept = [data.training_row_ids(cid, cache.max_examples) for cid in concept_ids]
  used = np.unique(np.concatenate([rows for rows, _ in per_concept]))  # shared negatives tokenised once
  frame = data.train.iloc[used]
  lengths = np.zeros(len(data.train), np.int64)
  lengths[used] = [len(a) + len(b) for a, b in zip(tok(frame["input"].tolist())["input_ids"],
                                                   tok(frame["output"].tolist())["input_ids"])]
  d = cache.model.config.hidden_size
  # DiffMean's and PCA's float64 moments (token_moments): counts, sums and the positives' scatter.
  moments = 8 * (2 + 2 * d + d * d) if {"DiffMean", "PCA"} & {method(m).name for m in methods} else 0
  out = np.full(len(concept_ids), moments, np.int64)
  for i, (rows, labels) in enumerate(per_concept):
    width = int(lengths[rows].max(initial=0)) + _TEMPLATE_TOKENS
    positives = int(np.sum(labels == 1))
    count = {"binarized": len(rows), "lm_all": len(rows), "lm_positive": positives, "preference": 2 * positives}
    # "@": another layer; RePS's pairs also hold the model's own answers, up to RESPONSE_TOKENS long (a bound)
    out[i] += sum(count[s.partition("@")[0]] * (width + RESPONSE_TOKENS * (s == "preference")) for s in sets
                  ) * row_bytes
  return out


def plan_chunks(concept_ids: Sequence[int], per_concept_bytes: np.ndarray, budget_bytes: int,
                max_size: int | None = None) -> list[tuple[int, ...]]:
  """Consecutive chunks of `concept_ids`, each as large as the budget (and `max_size`) allows, at least one."""
  if budget_bytes <= 0:
    raise AxjaxError(f"the memory budget must be positive, not {budget_bytes} bytes")
  if max_size is not None and max_size < 1:
    raise AxjaxError(f"--concept_chunk must be at least 1, not {max_size}")
  chunks, current, used = [], [], 0
  for cid, size in zip(concept_ids, per_concept_bytes):
    if current and (used + size > budget_bytes or len(current) == max_size):
      chunks.append(tuple(current))
      current, used = [], 0
    current.append(int(cid))
    used += int(size)
  return chunks + [tuple(current)] if current else chunks


def at_least(chunks: list[tuple[int, ...]], count: int) -> list[tuple[int, ...]]:
  """`chunks` with the largest halved (in place, order kept) until there are `count` of them, or every chunk
  holds one concept: work for each of `count` processes."""
  chunks = list(chunks)
  while len(chunks) < count and max(map(len, chunks)) > 1:
    i = max(range(len(chunks)), key=lambda j: len(chunks[j]))
    half = (len(chunks[i]) + 1) // 2
    chunks[i:i + 1] = [chunks[i][:half], chunks[i][half:]]
  return chunks
