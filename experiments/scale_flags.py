"""Flags of the experiments that train dictionaries: how a run scales (concept chunks, device mesh, processes)."""

from __future__ import annotations

from absl import flags

from axjax import processes, sharding
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
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "One process of a multi-host job (a TPU pod slice, several GPU hosts): joins the job "
    "with jax.distributed.initialize(), which reads the coordinator, process count and id from the environment "
    "on TPU pods and under SLURM/Open MPI; elsewhere give --coordinator_address, --num_processes, --process_id.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of the job (with --distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 to num_processes - 1.")


def chunking() -> dict:
  """run_detection's keyword arguments from the flags, checked."""
  if _BUDGET.value is not None and _BUDGET.value <= 0:
    raise AxjaxError(f"--memory_budget_gb must be positive, not {_BUDGET.value}")
  if _CHUNK.value is not None and _CHUNK.value < 1:
    raise AxjaxError(f"--concept_chunk must be at least 1, not {_CHUNK.value}")
  budget = None if _BUDGET.value is None else int(_BUDGET.value * 1e9)
  return {"memory_budget": budget, "max_chunk": _CHUNK.value}


def mesh():
  """The device mesh the flags ask for (checked against the devices present); first joins a multi-host job
  if asked, so the mesh spans every process's devices."""
  if _DISTRIBUTED.value or _COORDINATOR.value:
    given = [_COORDINATOR.value, _PROCESSES.value, _PROCESS_ID.value]
    if any(v is not None for v in given) and any(v is None for v in given):
      raise AxjaxError("--coordinator_address, --num_processes and --process_id go together: give all three, "
                       "or none on a TPU pod or under SLURM")
    if _PROCESSES.value is not None and not 0 <= _PROCESS_ID.value < _PROCESSES.value:
      raise AxjaxError(f"--process_id={_PROCESS_ID.value} is not in 0..{_PROCESSES.value - 1}")
    processes.initialize(*given)
  return sharding.make_mesh(_MESH.value)
