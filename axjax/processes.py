"""Several JAX processes (the hosts of a pod, or several GPU machines) running one job: start-up, fetching
arrays that span every process, and writing each result once.

Every process runs the same program on the same inputs; arrays split over the global mesh hold only this
process's shards, so a host value is gathered from all processes, and files are written by process 0 alone while
the others wait at a barrier. Orbax saves and loads (dictionaries, training state) are made by every process
together (Orbax writes host arrays from process 0). The output folder must be shared storage every process can
read, as Orbax needs.
Work that needs no other process (one process's share of the concept chunks, on its own devices) runs inside
`on_its_own()`, where these functions act as in a one-process job.
With one process every function here is the plain single-host operation.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, Iterator, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")
# How long the other processes wait at exit for process 0, which may go on alone for hours (judging steered
# generations, writing the report) after the work on devices is done.
SHUTDOWN_WAIT_SECONDS = 7 * 24 * 3600
_barriers = itertools.count()
_alone = False  # set on process 0 once the others have stopped: no more barriers
_on_its_own = False  # inside `on_its_own()`: this process works and writes as a one-process job


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins this process to the job (`jax.distributed.initialize`). On a TPU pod slice or under SLURM/Open MPI the
  arguments come from the environment; elsewhere give all three. CPU devices talk through gloo (the setting
  touches nothing else, and must precede the first use of a device)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             shutdown_timeout_seconds=SHUTDOWN_WAIT_SECONDS)


def multi() -> bool:
  """Whether other processes share this work (and its barriers)."""
  return jax.process_count() > 1 and not _on_its_own


@contextlib.contextmanager
def on_its_own() -> Iterator[None]:
  """Work this process does alone on its own devices (its share of the concept chunks): no barriers, no
  gathering, its own memory budget, and it writes its own files (into folders no other process writes; no Orbax
  saves, which need every process)."""
  global _on_its_own
  _on_its_own = True
  try:
    yield
  finally:
    _on_its_own = False


def is_writer() -> bool:
  """Process 0 writes the results."""
  return jax.process_index() == 0


def to_host(array: Any) -> np.ndarray:
  """`array` as a numpy array on this host; an array with shards on other processes is gathered from all of them
  (every process must call this at the same point)."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    if array.is_fully_replicated:
      return np.asarray(array.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
  return np.asarray(array)


def agreed(value: int) -> int:
  """Process 0's `value` on every process: a choice that shapes the compiled programs or the plan (a memory
  budget read from this host) must be the same everywhere."""
  if not multi():
    return value
  as_bytes = np.frombuffer(np.int64(value).tobytes(), np.uint8)  # JAX would cut an int64 to 32 bits
  return int(np.frombuffer(np.asarray(multihost_utils.broadcast_one_to_all(as_bytes), np.uint8).tobytes(),
                           np.int64)[0])


def shared_token() -> str:
  """A random name, the same on every process (for a staging folder they all write into)."""
  return f"{agreed(np.random.default_rng().integers(2**62)):016x}"


def on_writer(write: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
  """Runs `write` on process 0 only, then holds every process until it has finished (so what it wrote is there
  for all of them to read). Returns what `write` returned on process 0, None elsewhere."""
  if not multi() or _alone:
    return write(*args, **kwargs)
  result = write(*args, **kwargs) if is_writer() else None
  barrier()
  return result


def barrier() -> None:
  """Waits until every process has got here."""
  if multi() and not _alone:
    multihost_utils.sync_global_devices(f"axjax-barrier-{next(_barriers)}")


def leave_to_writer() -> bool:
  """Ends the part of a job that needs every process (anything on the mesh): process 0 goes on alone, writing
  without barriers, and gets True; the others get False and should stop."""
  global _alone
  if not multi():
    return True
  multihost_utils.sync_global_devices(f"axjax-leave-{next(_barriers)}")
  _alone = is_writer()
  return _alone
