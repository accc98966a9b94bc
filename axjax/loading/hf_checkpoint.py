"""Loads a Hugging Face Gemma checkpoint folder (config.json plus one or many *.safetensors)."""

from __future__ import annotations

import json
import os

from absl import logging

from axjax.errors import CheckpointError
from axjax.loading.param_filler import ParamFiller
from axjax.loading.param_layout import hf_target
from axjax.loading.safetensors_file import read_header, read_tensor
from axjax.model.config import GemmaConfig, from_hf_config


def read_config(folder: str) -> GemmaConfig:
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"{folder} has no config.json: it is not a Hugging Face checkpoint folder")
  try:
    with open(path) as f:
      return from_hf_config(json.load(f))
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def safetensors_files(folder: str) -> list[str]:
  """Shards named by model.safetensors.index.json, else every *.safetensors in the folder."""
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      names = sorted(set(json.load(f)["weight_map"].values()))
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
      raise CheckpointError(f"{folder} is missing shard(s) named in its index: {', '.join(missing)}")
  else:
    names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
  if not names:
    raise CheckpointError(f"{folder} has no *.safetensors weights")
  return [os.path.join(folder, n) for n in names]


def load_params(folder: str, config: GemmaConfig, dtype) -> dict:
  """Reads every shard tensor by tensor into axjax's stacked layout."""
  files = safetensors_files(folder)
  headers = [read_header(f) for f in files]  # validate every shard before reading any weights
  filler = ParamFiller(config, dtype, folder)
  skipped = []
  for header in headers:
    for name, entry in header.items():
      target = hf_target(name, config.family)
      if target is None:
        skipped.append(name)
        continue
      filler.put(target, name, read_tensor(entry))
  if skipped:
    logging.info("Ignored %d checkpoint tensors axjax does not use (e.g. %s)", len(skipped), skipped[0])
  return filler.finish()
