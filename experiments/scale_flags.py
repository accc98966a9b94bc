"""Flags of the experiments that train dictionaries: how a run scales (concept chunks, device mesh)."""

from __future__ import annotations

from absl import flags

from axjax import sharding
from axjax.errors import AxjaxError

_BUDGET = flags.DEFINE_float(
    "memory_budget_gb", None,
    "Host memory (GB) the layer-L activations of one concept chunk may take; concepts train chunk by chunk, so "
    "memory stays flat however many there are. Default: half the host memory free at the start.")
_MESH = flags.DEFINE_string(
    "mesh", None, "Devices sharing the work: 'concepts:N' splits concepts (and eval texts) over N devices, "
    "'concepts:N,model:M' also splits the frozen model's weights M ways. Default: every device on concepts.")
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


def mesh():
  """The device mesh the flags ask for (checked against the devices present)."""
  return sharding.make_mesh(_MESH.value)
