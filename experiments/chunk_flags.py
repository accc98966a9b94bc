"""Flags of the experiments that train dictionaries: how many concepts hold activations at once."""

from __future__ import annotations

from absl import flags

from axjax.errors import AxjaxError

_BUDGET = flags.DEFINE_float(
    "memory_budget_gb", None,
    "Host memory (GB) the layer-L activations of one concept chunk may take; concepts train chunk by chunk, so "
    "memory stays flat however many there are. Default: half the host memory free at the start.")
_CHUNK = flags.DEFINE_integer("concept_chunk", None, "At most this many concepts per chunk (default: as the "
                              "budget allows). Results do not depend on the chunking.")


def chunking() -> dict:
  """run_detection's keyword arguments from the flags, checked."""
  if _BUDGET.value is not None and _BUDGET.value <= 0:
    raise AxjaxError(f"--memory_budget_gb must be positive, not {_BUDGET.value}")
  if _CHUNK.value is not None and _CHUNK.value < 1:
    raise AxjaxError(f"--concept_chunk must be at least 1, not {_CHUNK.value}")
  budget = None if _BUDGET.value is None else int(_BUDGET.value * 1e9)
  return {"memory_budget": budget, "max_chunk": _CHUNK.value}
