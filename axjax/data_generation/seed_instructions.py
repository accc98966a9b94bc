"""The seed instructions AxBench's generator answers, per genre (text, code, math) and split (train, test).

AxBench draws them from Dolly open_qa (text), python_code_instructions_18k_alpaca (code) and GSM8K (math), the
first 1000 of each as the train split and the next 1000 as the test split. Here a user passes a folder of
`{genre}_{split}.jsonl` files (records with an "instruction"), AxBench's own `seed_instructions` folder (a
`datasets` DatasetDict saved with save_to_disk, splits `{genre}_{split}` with an "input" column, read offline with
`datasets.load_from_disk`), or `builtin`: the instructions the shipped
Concept10 datasets were generated from (its train file's inputs are train-split instructions, its latent-eval
inputs test-split ones; AxBench's data, Apache 2.0, itself drawn from those three sets), enough for small runs.
"""

from __future__ import annotations

import json
import os

import pandas as pd

from axjax.data.axbench_format import BUILTIN_ROOT
from axjax.errors import AxjaxError

GENRES = ("text", "code", "math")
SPLITS = ("train", "test")
BUILTIN = "builtin"
_BUILTIN_DATA = os.path.join(BUILTIN_ROOT, "concept10")


def seed_instructions(source: str = BUILTIN) -> dict[tuple[str, str], list[str]]:
  """{(genre, split): instructions}, each list without repeats and in a fixed order."""
  if source == BUILTIN:
    return _builtin()
  if not os.path.isdir(source):
    raise AxjaxError(f"there is no seed-instruction folder at {source} (pass a folder, or {BUILTIN!r})")
  if os.path.isfile(os.path.join(source, "dataset_dict.json")):
    return _saved_dataset(source)
  out = {}
  for genre in GENRES:
    for split in SPLITS:
      path = os.path.join(source, f"{genre}_{split}.jsonl")
      if not os.path.isfile(path):
        raise AxjaxError(f"{source} has no {genre}_{split}.jsonl (a seed-instruction folder holds one file per genre "
                         f"and split: {', '.join(f'{g}_{s}.jsonl' for g in GENRES for s in SPLITS)})")
      out[(genre, split)] = _read_jsonl(path)
  return out


def _read_jsonl(path: str) -> list[str]:
  """The "instruction" of every record of a jsonl file, or one sentence naming the bad line."""
  instructions = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        instructions.append(str(record["instruction"]))
      except (ValueError, KeyError, TypeError):
        raise AxjaxError(f"{path} line {number} is not a JSON record with an \"instruction\"") from None
  if not instructions:
    raise AxjaxError(f"{path} holds no instructions")
  return list(dict.fromkeys(instructions))


def _saved_dataset(source: str) -> dict[tuple[str, str], list[str]]:
  """AxBench's seed_instructions DatasetDict (save_to_disk), one split per genre and split."""
  import datasets  # only this source needs it

  saved = datasets.load_from_disk(source)
  out = {}
  for genre in GENRES:
    for split in SPLITS:
      name = f"{genre}_{split}"
      if name not in saved or "input" not in saved[name].column_names:
        raise AxjaxError(f"the saved dataset {source} has no {name} split with an \"input\" column (AxBench's "
                         "seed_instructions layout)")
      out[(genre, split)] = list(dict.fromkeys(map(str, saved[name]["input"])))
  return out


def _builtin() -> dict[tuple[str, str], list[str]]:
  """Train-split instructions from the shipped Concept10 train files, test-split ones from their latent-eval files,
  per genre, over all four model/layer folders."""
  frames = {split: [] for split in SPLITS}
  for folder in sorted(os.listdir(_BUILTIN_DATA)):
    root = os.path.join(_BUILTIN_DATA, folder)
    frames["train"].append(pd.read_parquet(os.path.join(root, "generate", "train_data.parquet"),
                                           columns=["input", "concept_genre"]))
    frames["test"].append(pd.read_parquet(os.path.join(root, "inference", "latent_eval_data.parquet"),
                                          columns=["input", "concept_genre"]))
  out = {}
  for split, parts in frames.items():
    frame = pd.concat(parts, ignore_index=True)
    for genre in GENRES:
      out[(genre, split)] = list(dict.fromkeys(frame.loc[frame["concept_genre"] == genre, "input"]))
  train = {i for g in GENRES for i in out[(g, "train")]}
  for genre in GENRES:  # an instruction in both splits stays in train only: the test split is held out
    out[(genre, "test")] = [i for i in out[(genre, "test")] if i not in train]
  return out
