"""Writes result files atomically (temporary file, then rename), so an interrupted run never leaves half a file."""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, value: Any) -> None:
  write_text(path, json.dumps(value, indent=1, allow_nan=False) + "\n")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def write_parquet(path: str, frame: Any) -> None:
  """A pandas DataFrame as a parquet file, written atomically."""
  buffer = io.BytesIO()
  frame.to_parquet(buffer, index=False)
  write_bytes(path, buffer.getvalue())
