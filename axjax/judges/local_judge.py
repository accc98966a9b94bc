"""A judge run by axjax itself: an instruction-tuned Gemma rates with the rubrics through batched generation.

Fully offline and free; replies are cached by (model, prompt) like the openai judge's, so reruns cost nothing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from axjax.errors import AxjaxError
from axjax.generation.sampling import SamplingConfig
from axjax.generation.text import generate_text
from axjax.judges import rubrics
from axjax.judges.base import Progress, RatingRequest
from axjax.judges.reply_cache import CachedReply, ReplyCache
from axjax.loading.load import LoadedModel
from axjax.loading.tokenizer import GEMMA_CHAT_TEMPLATE


class LocalJudge:
  """Rates each aspect with one greedy (by default) chat completion of a local model."""

  is_proxy = False

  def __init__(self, model: LoadedModel, cache_path: str, batch_size: int = 32, max_new_tokens: int = 256,
               temperature: float = 0.0, seed: int = 0):
    self.model = model
    self.name = f"local:{model.name}"
    self._cache = ReplyCache(cache_path)
    self._sampling = SamplingConfig(max_new_tokens, temperature)
    self._batch_size, self._seed = batch_size, seed
    self._usage = dict(generated=0, cached=0, malformed=0)

  def check(self) -> None:
    """A checkpoint without its own chat template is a base model that cannot follow the rubric: refuse it."""
    tok = self.model.tokenizer
    if tok is None or getattr(tok, "chat_template", None) in (None, GEMMA_CHAT_TEMPLATE):
      raise AxjaxError(f"the local judge needs an instruction-tuned model shipping a chat template, and "
                       f"{self.model.source} ships none")

  def rate(self, requests: Sequence[RatingRequest], progress: Progress | None = None) -> np.ndarray:
    """int8 [len(requests), 3]; prompts already in the cache are not generated again."""
    rows = [rubrics.prompts(r) for r in requests]
    unique = list(dict.fromkeys(p for row in rows for p in row))
    replies = {p: hit.text for p in unique if (hit := self._cache.get(self.name, p)) is not None}
    self._usage["cached"] += len(replies)
    missing = [p for p in unique if p not in replies]
    for start in range(0, len(missing), self._batch_size):
      if progress is not None:
        progress(len(replies), len(unique))
      batch = missing[start:start + self._batch_size]
      texts = generate_text(self.model, batch, sampling=self._sampling, seed=self._seed, chat=True,
                            batch_size=self._batch_size)
      for prompt, text in zip(batch, texts):
        self._cache.put(self.name, prompt, CachedReply(text))
        replies[prompt] = text
      self._usage["generated"] += len(batch)
    if progress is not None:
      progress(len(unique), len(unique))
    matrix, malformed = rubrics.rating_matrix(rows, replies)
    self._usage["malformed"] += malformed
    return matrix

  def usage(self) -> dict[str, int]:
    """generated (new replies), cached and malformed (rated 0) prompts."""
    return dict(self._usage)
