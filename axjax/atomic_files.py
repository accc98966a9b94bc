"""Writes result files atomically (temporary file, then rename), so an interrupted run never leaves half a file.

With several JAX processes (a pod), process 0 writes and the others wait for it (`axjax.processes`).
A results folder that cannot be a folder (the path is a file, a parent is a file, permission is denied) raises
AxjaxError with one sentence naming the path, so every CLI answers it with one `error:` line.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from typing import Any

from axjax import processes
from axjax.errors import AxjaxError

# Errors that say the path is wrong (bad input), not that the machine failed (disk full, I/O error).
_BAD_PATH = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
             errno.ENAMETOOLONG, errno.ELOOP}


def _nearest_existing(path: str) -> str:
  """`path` itself or its nearest ancestor that exists (as a file, folder or anything else)."""
  path = os.path.abspath(path)
  while not os.path.lexists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def _folder_problem(path: str) -> str | None:
  """Why folder `path` could not be used or created (without creating anything), or None if it looks fine."""
  if os.path.exists(path):
    if not os.path.isdir(path):
      return f"{path} exists and is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
      return f"directory {path} is not writable (permission denied)"
    return None
  ancestor = _nearest_existing(path)
  if not os.path.isdir(ancestor):
    return f"cannot create directory {path}: {ancestor} is not a directory"
  if not os.access(ancestor, os.W_OK | os.X_OK):
    return f"cannot create directory {path}: {ancestor} is not writable (permission denied)"
  return None


def check_output_dir(path: str) -> None:
  """Raises AxjaxError if results folder `path` cannot be used or created; creates nothing.

  For checking a CLI's output folder before any expensive work; `make_dirs` still guards the actual creation.
  """
  problem = _folder_problem(path)
  if problem:
    raise AxjaxError(problem)


def make_dirs(path: str) -> None:
  """Creates folder `path` and its parents if missing; AxjaxError (one sentence naming `path`) if it cannot."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    if e.errno not in _BAD_PATH:
      raise
    raise AxjaxError(_folder_problem(path) or f"cannot create directory {path}: {e.strerror}") from None


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically; with several processes, process 0 writes and the others wait for it."""
  processes.on_writer(_write_bytes, path, data)


def _write_bytes(path: str, data: bytes) -> None:
  folder = os.path.dirname(path) or "."
  make_dirs(folder)
  try:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  except OSError as e:
    if e.errno not in _BAD_PATH:
      raise
    raise AxjaxError(f"cannot write {path}: {e.strerror}") from None
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.errno in _BAD_PATH:
      reason = "it is a directory" if os.path.isdir(path) else e.strerror
      raise AxjaxError(f"cannot write {path}: {reason}") from None
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
