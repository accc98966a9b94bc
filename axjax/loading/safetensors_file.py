"""Reads safetensors files tensor by tensor, checking each file's header against its size.

We parse the format ourselves (8-byte header length, JSON header, raw data) so that one tensor at a time is
read into memory and a truncated file is reported by name before any weights are used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import ml_dtypes
import numpy as np

from axjax.errors import CheckpointError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class TensorEntry:
  """Where one tensor's bytes lie."""

  path: str
  name: str
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int  # absolute byte offset in the file
  nbytes: int


def read_header(path: str) -> dict[str, TensorEntry]:
  """Entries of every tensor in one safetensors file; raises if the file is malformed or truncated."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(f"{path} is not a safetensors file: it has only {size} bytes")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > size - 8:
      raise CheckpointError(f"{path} is truncated: its header claims {header_len} bytes but the file has {size}")
    try:
      header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{path} has a malformed safetensors header ({e})") from None
  data_start = 8 + header_len
  entries, end = {}, 0
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _DTYPES:
      raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    lo, hi = info["data_offsets"]
    entries[name] = TensorEntry(path, name, np.dtype(_DTYPES[info["dtype"]]), tuple(info["shape"]),
                                data_start + lo, hi - lo)
    end = max(end, hi)
  if data_start + end > size:
    raise CheckpointError(
        f"{path} is truncated: its tensors need {data_start + end} bytes but the file has {size}")
  return entries


def read_tensor(entry: TensorEntry) -> np.ndarray:
  """Reads one tensor into a fresh array (plain reads, so no mapped pages stay resident afterwards)."""
  out = np.empty(entry.shape, entry.dtype)
  with open(entry.path, "rb") as f:
    f.seek(entry.start)
    if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != entry.nbytes:
      raise CheckpointError(f"{entry.path} is truncated inside tensor {entry.name}")
  return out
