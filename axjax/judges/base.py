"""What every judge of steered generations shares: the request, the three aspects and the interface."""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

import numpy as np

ASPECTS = ("concept", "instruction", "fluency")  # AxBench's three 0-2 ratings, in this column order

Progress = Callable[[int, int], None]  # (done, total)


@dataclasses.dataclass(frozen=True)
class RatingRequest:
  """One generation to rate: the concept it was steered towards and the instruction it answers."""

  concept: str
  instruction: str
  generation: str


class Judge(Protocol):
  """Rates generations 0, 1 or 2 on each aspect; an unparseable or failed rating counts as 0 (AxBench)."""

  name: str  # stored with every rating, e.g. "openai:gpt-4o-mini" or "proxy:wordllama-ppl-v1"
  is_proxy: bool  # True for judges that only approximate the rubric; reports label their numbers

  def check(self) -> None:
    """Raises AxjaxError with one sentence if the judge cannot work (no server, no key), before any rating."""

  def rate(self, requests: Sequence[RatingRequest], progress: Progress | None = None) -> np.ndarray:
    """int8 [len(requests), 3] ratings in ASPECTS order, each in {0, 1, 2}."""

  def usage(self) -> dict[str, int]:
    """Counters for the report, e.g. {"calls": .., "cached": .., "prompt_tokens": .., "completion_tokens": ..}."""
