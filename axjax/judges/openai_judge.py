"""The `openai` judge: rates generations through any OpenAI-compatible chat-completions endpoint
(`axjax.llm.openai_client`), one completion per distinct rubric prompt."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from axjax.judges import rubrics
from axjax.judges.base import Progress, RatingRequest
from axjax.llm.openai_client import OpenAIClient


class OpenAIJudge(OpenAIClient):
  """Rates each aspect with one chat completion per (deduplicated, uncached) prompt."""

  is_proxy = False

  def rate(self, requests: Sequence[RatingRequest], progress: Progress | None = None) -> np.ndarray:
    """int8 [len(requests), 3]; each distinct prompt is asked once, cached replies are not asked again."""
    rows = [rubrics.prompts(r) for r in requests]
    replies = self._replies([p for row in rows for p in row], progress)
    matrix, malformed = rubrics.rating_matrix(rows, replies)
    self._count(malformed=malformed)
    return matrix
