"""Training state saved after every epoch (Orbax), so a killed training run continues where it stopped.

Each save is a complete Orbax checkpoint in its own folder `step-<steps done>` (Orbax writes it under a temporary
name and renames it when complete); older ones are removed only after a newer one is complete, so a kill at
any moment leaves at least one whole checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from axjax import processes
from axjax.errors import AxjaxError

PyTree = Any
_NAME = re.compile(r"step-(\d+)$")


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


@dataclasses.dataclass(frozen=True)
class EpochCheckpoint:
  """Where one training run keeps its state: parameters and optimizer state (any pytree), the steps done,
  the training record so far, and the settings, which a resumed run must share."""

  folder: str
  steps_per_epoch: int
  settings: dict  # JSON-serialisable; a checkpoint saved with other settings is refused

  def epoch_ends(self, step: int) -> bool:
    return (step + 1) % self.steps_per_epoch == 0

  def _saved(self) -> list[tuple[int, str]]:
    folder = os.path.abspath(self.folder)  # Orbax takes absolute paths only
    if not os.path.isdir(folder):
      return []
    found = [(int(m.group(1)), os.path.join(folder, name)) for name in os.listdir(folder) if (m := _NAME.match(name))]
    return sorted(found)

  def restore(self, template: PyTree) -> tuple[int, PyTree, dict[str, np.ndarray]] | None:
    """(steps done, state shaped like `template`, record) of the newest checkpoint, or None if there is none."""
    saved = self._saved()
    if not saved:
      return None
    step, path = saved[-1]
    items = _checkpointer().restore(path, ocp.args.Composite(
        state=ocp.args.StandardRestore(), record=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    if items["meta"]["settings"] != self.settings:
      raise AxjaxError(f"{self.folder} holds training state saved with other settings; remove it or choose "
                       "another --output_dir")
    leaves, treedef = jax.tree.flatten(template)
    state = items["state"]
    restored = [jax.numpy.asarray(state[str(i)], dtype=leaf.dtype) for i, leaf in enumerate(leaves)]
    return step, jax.tree.unflatten(treedef, restored), {k: np.asarray(v) for k, v in items["record"].items()}

  def save(self, step: int, state: PyTree, record: dict[str, np.ndarray]) -> None:
    """Saves the state after `step` steps, then removes older checkpoints."""
    older = self._saved()
    leaves = {str(i): processes.to_host(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}
    _checkpointer().save(os.path.abspath(os.path.join(self.folder, f"step-{step}")), ocp.args.Composite(
        state=ocp.args.StandardSave(leaves), record=ocp.args.StandardSave(record),
        meta=ocp.args.JsonSave({"step": step, "settings": self.settings})), force=True)
    for done, path in older:
      if done != step:
        processes.on_writer(shutil.rmtree, path, ignore_errors=True)

  def remove(self) -> None:
    processes.on_writer(shutil.rmtree, self.folder, ignore_errors=True)
