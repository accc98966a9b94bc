"""The instructions steered generations answer: AlpacaEval by default, any file by path, drawn per concept."""

from __future__ import annotations

import json
import os

import numpy as np

from axjax.data.alpaca import alpaca_instructions
from axjax.errors import AxjaxError


def read_instructions(path: str | None) -> tuple[str, ...]:
  """AlpacaEval's 805 instructions (None), or a file: .jsonl/.json records with an "instruction" field, or text
  with one instruction per line."""
  if path is None:
    return alpaca_instructions()
  if not os.path.isfile(path):
    raise AxjaxError(f"instructions file {path} does not exist")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  try:
    if path.endswith(".jsonl"):
      records = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif path.endswith(".json"):
      records = json.loads(text)
    else:
      records = [{"instruction": line} for line in text.splitlines() if line.strip()]
    found = tuple(str(r["instruction"]) for r in records)
  except (ValueError, KeyError, TypeError) as e:
    raise AxjaxError(f"instructions file {path} is not a list of records with an 'instruction' field ({e})") from e
  if not found:
    raise AxjaxError(f"instructions file {path} holds no instructions")
  return found


def draw_instructions(pool_size: int, concept_id: int, count: int) -> np.ndarray:
  """Indices of `count` distinct instructions for a concept: AxBench's `df.sample(count, random_state=concept_id)`."""
  if count > pool_size:
    raise AxjaxError(f"{count} instructions per concept were asked for but the instruction set has only {pool_size}")
  return np.random.RandomState(int(concept_id)).choice(pool_size, size=count, replace=False)
