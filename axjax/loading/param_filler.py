"""Fills axjax's stacked parameter arrays tensor by tensor, then hands them to JAX one at a time.

Peak host memory stays near one copy of the parameters: checkpoint tensors are read one at a time into
preallocated stacked arrays, which are 64-byte aligned so that JAX on CPU adopts them without copying.
"""

from __future__ import annotations

import gc
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from axjax.errors import CheckpointError
from axjax.loading.param_layout import Target
from axjax.model.config import GemmaConfig
from axjax.model.transformer import init_params


def param_shapes(config: GemmaConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {path: shape} of the full parameter tree, computed without allocating it."""
  tree = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  return {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype, align: int = 64) -> np.ndarray:
  """An uninitialised array whose data starts on an `align`-byte boundary (what XLA's CPU client can alias)."""
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + align, np.uint8)
  offset = -raw.ctypes.data % align
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class ParamFiller:
  """Preallocated stacked host arrays, written one checkpoint tensor at a time."""

  def __init__(self, config: GemmaConfig, dtype: Any, source: str):
    self.config, self.source = config, source
    self.dtype = np.dtype(jnp.dtype(dtype))
    self.shapes = param_shapes(config)
    self.arrays = {path: _aligned_empty(shape, self.dtype) for path, shape in self.shapes.items()}
    self.missing = {(path, layer) for path, shape in self.shapes.items()
                    for layer in (range(shape[0]) if path[0] == "layers" else [None])}

  def put(self, target: Target, name: str, value: np.ndarray, norm_offset: float = 0.0) -> None:
    """Writes one checkpoint tensor (HF [out, in] layout for linear weights) into its slot."""
    if target.path not in self.arrays:
      raise CheckpointError(f"{self.source}: tensor {name} has no place in this {self.config.family=} model")
    dest = self.arrays[target.path]
    if target.layer is not None:
      if target.layer >= dest.shape[0]:
        raise CheckpointError(f"{self.source}: tensor {name} names layer {target.layer} but the config has "
                              f"{self.config.num_layers} layers")
      dest = dest[target.layer]
    if target.kind == "linear":
      if value.ndim != 2 or value.size != dest.size:
        raise CheckpointError(f"{self.source}: tensor {name} has shape {value.shape}, which does not fit "
                              f"the config's {dest.shape}")
      value = value.T.reshape(dest.shape)
    elif value.shape != dest.shape:
      raise CheckpointError(f"{self.source}: tensor {name} has shape {value.shape} but the config implies "
                            f"{dest.shape}")
    if norm_offset:
      value = value.astype(np.float32) - np.float32(norm_offset)
    dest[...] = value
    self.missing.discard((target.path, target.layer))

  def finish(self) -> dict[str, Any]:
    """Checks that every parameter was written, then hands each array to JAX.

    On CPU `device_put` adopts the aligned host buffer; on accelerators it copies, and the host copy is freed
    (collected at once rather than whenever Python's collector runs).
    """
    if self.missing:
      names = sorted(f"{'/'.join(p)}" + ("" if l is None else f"[layer {l}]") for p, l in self.missing)
      raise CheckpointError(f"{self.source} lacks {len(names)} parameter tensors, e.g. {', '.join(names[:3])}")
    tree: dict[str, Any] = {}
    for path in list(self.arrays):
      node = tree
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = jax.device_put(self.arrays.pop(path))
    gc.collect()
    return tree
