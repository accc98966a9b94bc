"""Imports AxBench's released rank-1 dictionaries (`{M}_weight.pt`, `{M}_bias.pt`, `metadata.jsonl`).

AxBench's train stage stacks each concept's `proj.weight` [1, d] into `{M}_weight.pt` [C, d] and its
`proj.bias` [1] into `{M}_bias.pt` [C] (torch.save, rows in concept order, ranks concatenated in order);
`metadata.jsonl` has one line per trained concept. Reading .pt files needs PyTorch, imported only here.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from axjax.dictionary.store import Dictionary, DictionaryError


def _read_tensor(path: str | os.PathLike, ndim: int) -> np.ndarray:
  """The float32 array of the tensor that torch.save wrote to `path`, checked to have `ndim` axes."""
  try:
    import torch
  except ImportError:
    raise DictionaryError("reading AxBench .pt files needs PyTorch, which is not installed "
                          "(pip install torch)") from None
  if not os.path.isfile(path):
    raise DictionaryError(f"no AxBench tensor file at {path}")
  try:
    value = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for a file that is not its pickle
    raise DictionaryError(f"{path} is not a file written by torch.save ({type(e).__name__})") from None
  if not isinstance(value, torch.Tensor) or value.ndim != ndim:
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    raise DictionaryError(f"{path} holds {shape}, not the {ndim}-axis tensor of a rank-1 dictionary")
  return value.detach().float().numpy()


def _read_metadata(path: str | os.PathLike) -> list[dict[str, Any]]:
  """AxBench's metadata.jsonl rows, sorted by concept_id (the order AxBench trains and stacks concepts)."""
  if not os.path.isfile(path):
    raise DictionaryError(f"no AxBench metadata file at {path}")
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        raise DictionaryError(f"line {number} of {path} is not valid JSON") from None
      if not isinstance(row, dict) or type(row.get("concept_id")) is not int \
          or not isinstance(row.get("concept"), str):
        raise DictionaryError(f"line {number} of {path} lacks an integer concept_id or a string concept")
      rows.append(row)
  ids = [row["concept_id"] for row in rows]
  if len(set(ids)) != len(ids):
    raise DictionaryError(f"{path} lists some concept ids more than once (was it appended to twice?)")
  return sorted(rows, key=lambda row: row["concept_id"])


def import_axbench_dictionary(weight_path: str | os.PathLike, metadata_path: str | os.PathLike, *, method: str,
                              model_name: str, layer: int,
                              bias_path: str | os.PathLike | None = None) -> Dictionary:
  """A `Dictionary` from AxBench's `{M}_weight.pt` [C, d], optional `{M}_bias.pt` [C] and `metadata.jsonl`.

  Row i belongs to the i-th smallest concept_id of the metadata; biases are zero without `bias_path`.
  """
  rows = _read_metadata(metadata_path)
  weights = _read_tensor(weight_path, ndim=2)
  if weights.shape[0] != len(rows):
    raise DictionaryError(f"{weight_path} has {weights.shape[0]} rows but {metadata_path} lists "
                          f"{len(rows)} concepts")
  biases = np.zeros(len(rows), np.float32)
  if bias_path is not None:
    biases = _read_tensor(bias_path, ndim=1)
    if biases.shape[0] != len(rows):
      raise DictionaryError(f"{bias_path} has {biases.shape[0]} biases but {metadata_path} lists "
                            f"{len(rows)} concepts")
  source = {"source": "axbench", "weight_file": os.path.basename(weight_path),
            "bias_file": os.path.basename(bias_path) if bias_path is not None else None}
  return Dictionary(weights=weights, biases=biases, concept_ids=tuple(row["concept_id"] for row in rows),
                    concept_names=tuple(row["concept"] for row in rows), method=method, model_name=model_name,
                    layer=layer, hyperparameters=source)
