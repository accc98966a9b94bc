"""Device meshes: a concept axis (each device trains and scores its share of the concepts or texts) and a model
axis (the frozen model's weights split FSDP-style, gathered layer by layer inside the compiled programs).

`--mesh=concepts:8` or `--mesh=concepts:4,model:2`; by default every device is on the concept axis. The same
programs run on one device or many: only where the arrays live changes, and XLA's SPMD partitioner does the rest.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from axjax.errors import AxjaxError

CONCEPTS, MODEL = "concepts", "model"


def make_mesh(spec: str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (concepts, model) mesh from "concepts:C,model:M" (either may be left out: it takes what is left of the
  devices); default every device on the concept axis."""
  devices = list(devices or jax.devices())
  sizes = {CONCEPTS: None, MODEL: 1}
  if spec:
    sizes[MODEL] = None
    for part in spec.split(","):
      name, _, value = part.strip().partition(":")
      if name not in sizes or not value.isdigit() or int(value) < 1:
        raise AxjaxError(f"--mesh={spec!r} is not of the form concepts:N,model:M (positive sizes)")
      sizes[name] = int(value)
  known = int(np.prod([v for v in sizes.values() if v is not None]))
  missing = [k for k, v in sizes.items() if v is None]
  for name in missing:
    sizes[name] = len(devices) // known if name == missing[0] else 1
  if sizes[CONCEPTS] * sizes[MODEL] != len(devices):
    raise AxjaxError(f"--mesh={spec!r} does not fit the {len(devices)} devices present: concepts x model must "
                     f"equal {len(devices)}")
  return Mesh(np.array(devices).reshape(sizes[CONCEPTS], sizes[MODEL]), (CONCEPTS, MODEL))


def split_concepts(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the concept axis (concepts, or the rows of a batch), copies along the model axis."""
  return NamedSharding(mesh, PartitionSpec(CONCEPTS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _frozen_spec(path, leaf, model_size: int) -> PartitionSpec:
  """Split a weight's largest axis (never the stacked-layer axis the scan walks) over the model axis."""
  if model_size == 1 or leaf.ndim < 2:
    return PartitionSpec()
  stacked = any(getattr(k, "key", None) == "layers" for k in path)
  axes = [a for a in range(1 if stacked else 0, leaf.ndim) if leaf.shape[a] % model_size == 0]
  if not axes:
    return PartitionSpec()
  axis = max(axes, key=lambda a: leaf.shape[a])
  return PartitionSpec(*[MODEL if a == axis else None for a in range(leaf.ndim)])


def place_frozen(params: Any, mesh: Mesh) -> Any:
  """The frozen model's weights on `mesh`: split over the model axis (FSDP-style), copied along the concept axis."""
  model_size = mesh.shape[MODEL]
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jax.device_put(leaf, NamedSharding(mesh, _frozen_spec(path, leaf, model_size))), params)


def concept_multiple(mesh: Mesh, count: int) -> int:
  """`count` rounded up to a multiple of the mesh's concept axis (concepts or batch rows split evenly)."""
  n = mesh.shape[CONCEPTS]
  return -(-count // n) * n


def batch_placement(mesh: Mesh | None, batch_size: int):
  """(batch size rounded up to a multiple of the mesh's concept axis, a function placing host arrays [B, ...]
  with their rows split over that axis); without a mesh, the batch size and plain device arrays."""
  if mesh is None:
    return batch_size, lambda *arrays: tuple(jax.numpy.asarray(a) for a in arrays)
  return concept_multiple(mesh, batch_size), lambda *arrays: tuple(put_split(a, mesh) for a in arrays)


def put_split(array: Any, mesh: Mesh) -> jax.Array:
  """`array` (host, or on this process's device) with its leading axis split over the mesh's concept axis. Goes
  through the host, so the mesh may span other processes' devices too; PRNG keys travel as their key data."""
  if isinstance(array, jax.Array) and jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(put_split(jax.random.key_data(array), mesh), impl=jax.random.key_impl(array))
  return jax.device_put(np.asarray(array), split_concepts(mesh))


def local_mesh(mesh: Mesh) -> Mesh | None:
  """The part of `mesh` on this process's devices (its entries of the concept axis, each with its whole model
  axis), for work a process does on its own; None where a model-axis group spans processes."""
  process = np.vectorize(lambda device: device.process_index)(mesh.devices)
  if (process != process[:, :1]).any():
    return None
  mine = process[:, 0] == jax.process_index()
  return Mesh(mesh.devices[mine], mesh.axis_names)
