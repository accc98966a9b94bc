"""Reads GGUF metadata and tensors; dequantization is done by the `gguf` package.

`gguf.GGUFReader` builds an object per tokenizer entry (18 s for Gemma's 262k tokens), so we parse the
small header ourselves, skipping large arrays, and memory-map each tensor's rows for `gguf.quants.dequantize`.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any, BinaryIO

import numpy as np

from axjax.errors import CheckpointError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
  name: str
  shape: tuple[int, ...]  # numpy order (outermost first), e.g. [out, in] for a linear weight
  qtype: int
  offset: int  # absolute byte offset


class _Reader:
  def __init__(self, f: BinaryIO, path: str):
    self.f, self.path = f, path

  def unpack(self, fmt: str):
    raw = self.f.read(struct.calcsize(fmt))
    if len(raw) < struct.calcsize(fmt):
      raise CheckpointError(f"{self.path} is truncated inside its GGUF header")
    return struct.unpack(fmt, raw)[0]

  def string(self) -> str:
    return self.f.read(self.unpack("<Q")).decode("utf-8", errors="replace")

  def value(self, vtype: int, keep_arrays: bool) -> Any:
    if vtype in _SCALARS:
      return self.unpack(_SCALARS[vtype])
    if vtype == _STRING:
      return self.string()
    if vtype == _ARRAY:
      item, count = self.unpack("<I"), self.unpack("<Q")
      if item in _SCALARS:
        size = count * struct.calcsize(_SCALARS[item])
        if not keep_arrays:  # skip fixed-size arrays without reading them
          self.f.seek(size, 1)
          return count
        return np.frombuffer(self.f.read(size), np.dtype(_SCALARS[item])).tolist()
      if item == _STRING and not keep_arrays:
        for _ in range(count):
          self.f.seek(self.unpack("<Q"), 1)
        return count
      return [self.value(item, keep_arrays) for _ in range(count)]
    raise CheckpointError(f"{self.path} has an unknown GGUF value type {vtype}")


def read_gguf(path: str, arrays: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[GGUFTensor]]:
  """Metadata and tensor descriptors of a GGUF file; arrays not named in `arrays` are replaced by their lengths."""
  import gguf

  with open(path, "rb") as f:
    if f.read(4) != b"GGUF":
      raise CheckpointError(f"{path} is not a GGUF file (bad magic bytes)")
    r = _Reader(f, path)
    version, n_tensors, n_kv = r.unpack("<I"), r.unpack("<Q"), r.unpack("<Q")
    if version < 2:
      raise CheckpointError(f"{path} is GGUF version {version}; versions 2 and 3 are supported")
    meta = {}
    for _ in range(n_kv):
      key = r.string()
      meta[key] = r.value(r.unpack("<I"), keep_arrays=key in arrays)
    infos = []
    for _ in range(n_tensors):
      name = r.string()
      dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
      infos.append((name, tuple(reversed(dims)), r.unpack("<I"), r.unpack("<Q")))
    align = int(meta.get("general.alignment", 32))
    data_start = -(-f.tell() // align) * align
  size = os.path.getsize(path)
  tensors = []
  for name, shape, qtype, offset in infos:
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    end = data_start + offset + int(np.prod(shape)) // block * type_size
    if end > size:
      raise CheckpointError(f"{path} is truncated: tensor {name} ends at byte {end} but the file has {size}")
    tensors.append(GGUFTensor(name, shape, qtype, data_start + offset))
  return meta, tensors


def read_gguf_tensor(path: str, tensor: GGUFTensor) -> np.ndarray:
  """Dequantizes one tensor to float32 in numpy order."""
  import gguf

  qtype = gguf.GGMLQuantizationType(tensor.qtype)
  block, type_size = gguf.GGML_QUANT_SIZES[qtype]
  row = tensor.shape[-1]
  rows = int(np.prod(tensor.shape[:-1]))
  raw = np.memmap(path, np.uint8, "r", offset=tensor.offset, shape=(rows, row // block * type_size))
  return np.asarray(gguf.quants.dequantize(raw, qtype), np.float32).reshape(tensor.shape)
