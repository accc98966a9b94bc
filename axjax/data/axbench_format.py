"""Reads AxBench dataset folders (generate/train_data*.parquet, metadata.jsonl, inference/latent_eval_data.parquet).

Everything is validated here, before any model work, so a malformed file fails with one sentence naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re

import numpy as np
import pandas as pd

from axjax.errors import AxjaxError

BUILTIN_ROOT = pathlib.Path(__file__).parent / "axbench"
GENRES = ("text", "code", "math")
POOL_CONCEPT = "EEEEE"  # AxBench's EMPTY_CONCEPT: `output_concept` of the shared negative pool
EVAL_CATEGORIES = ("positive", "negative", "hard negative")
TRAIN_COLUMNS = ("input", "output", "output_concept", "concept_genre", "category", "concept_id")
EVAL_COLUMNS = ("input", "output", "output_concept", "category", "concept_id")
_SHARD = re.compile(r"train_data(?:_(\d+))?\.parquet")


class DataFormatError(AxjaxError):
  """An AxBench dataset folder or file that is missing, empty or malformed."""


@dataclasses.dataclass(frozen=True)
class Concept:
  """One metadata.jsonl line: the concept's id, description, first genre and Neuronpedia reference."""

  concept_id: int
  name: str
  genre: str
  ref: str | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class AxbenchData:
  """A validated AxBench dataset: its concepts (in training order) and their train and latent-eval rows."""

  folder: str
  concepts: tuple[Concept, ...]
  train: pd.DataFrame  # the pool negatives plus the positives of `concepts`, all shards in AxBench's order
  latent_eval: pd.DataFrame | None  # rows of `concepts` grouped in concept order, or None without the file

  def concept(self, concept_id: int) -> Concept:
    try:
      return self._by_id[concept_id]
    except KeyError:
      raise AxjaxError(f"concept_id {concept_id} is not among the {len(self.concepts)} concepts read from "
                       f"{self.folder}") from None

  def training_row_ids(self, concept_id: int, max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A concept's training set as AxBench's train.py builds it: rows of `train` and their labels (1/0).

    The rows are the concept's positives, then the pool negatives of its genre, each in file order;
    `max_examples` keeps the first max_examples // 2 of each (AxBench's `max_num_of_examples`).
    """
    if max_examples is not None and max_examples < 2:
      raise AxjaxError(f"max_examples must be at least 2 (half positives, half negatives), not {max_examples!r}")
    c = self.concept(concept_id)
    pos, neg = self._positive_rows[c.concept_id], self._pool_rows[c.genre]
    if max_examples is not None:
      pos, neg = pos[:max_examples // 2], neg[:max_examples // 2]
    labels = np.concatenate([np.ones(len(pos), np.int32), np.zeros(len(neg), np.int32)])
    return np.concatenate([pos, neg]), labels

  def training_rows(self, concept_id: int, max_examples: int | None = None) -> pd.DataFrame:
    """The rows of `training_row_ids` as a DataFrame with a `label` column."""
    rows, labels = self.training_row_ids(concept_id, max_examples)
    return self.train.iloc[rows].assign(label=labels).reset_index(drop=True)

  @functools.cached_property
  def _by_id(self) -> dict[int, Concept]:
    return {c.concept_id: c for c in self.concepts}

  @functools.cached_property
  def _positive_rows(self) -> dict[int, np.ndarray]:
    """Rows of each concept's positives (category 'positive', output_concept its description)."""
    names = {c.concept_id: c.name for c in self.concepts}
    t = self.train
    is_pos = (t["category"] == "positive") & (t["output_concept"] == t["concept_id"].map(names))
    rows = np.flatnonzero(is_pos.to_numpy(dtype=bool, na_value=False))
    rows = rows[np.argsort(t["concept_id"].to_numpy()[rows], kind="stable")]  # grouped by concept, file order kept
    ids = t["concept_id"].to_numpy()[rows]
    return {c.concept_id: rows[np.searchsorted(ids, c.concept_id):np.searchsorted(ids, c.concept_id, "right")]
            for c in self.concepts}

  @functools.cached_property
  def _pool_rows(self) -> dict[str, np.ndarray]:
    """Rows of the pool negatives of each genre, in file order."""
    pool = _is_pool(self.train).to_numpy(dtype=bool, na_value=False)
    genre = self.train["concept_genre"].to_numpy()
    return {g: np.flatnonzero(pool & (genre == g)) for g in GENRES}


def builtin_datasets() -> tuple[str, ...]:
  """Names of the shipped datasets that `read_axbench` reads, like "concept10/prod_2b_l20_v1".

  The shipped Concept500 folders hold metadata only: `read_concepts` reads them.
  """
  return tuple(sorted(f"{p.parent.parent.parent.name}/{p.parent.parent.name}"
                      for p in BUILTIN_ROOT.glob("*/*/generate/train_data*.parquet") if _SHARD.fullmatch(p.name)))


def _folder(path_or_name: str | os.PathLike) -> pathlib.Path:
  """A built-in dataset name or a folder path, resolved to the folder."""
  name = os.fspath(path_or_name)
  builtin = BUILTIN_ROOT / name
  if not os.path.isabs(name) and (builtin / "generate" / "metadata.jsonl").is_file():
    return builtin
  if os.path.isdir(name):
    return pathlib.Path(name)
  raise DataFormatError(f"{name!r} is neither a folder nor a built-in dataset name "
                        f"(built-in: {', '.join(builtin_datasets())})")


def _read_metadata(path: pathlib.Path) -> tuple[Concept, ...]:
  """Parses metadata.jsonl; the genre is the first entry of `concept_genres_map[concept]`, as in AxBench."""
  if not path.is_file():
    raise DataFormatError(f"{path.parent.parent} has no generate/metadata.jsonl (AxBench's layout is "
                          "generate/{train_data*.parquet, metadata.jsonl} and inference/latent_eval_data.parquet)")
  concepts, seen = [], set()
  for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataFormatError(f"{path} line {n} is not valid JSON ({e.msg})") from None
    if not isinstance(entry, dict):
      raise DataFormatError(f"{path} line {n} is not a JSON object")
    for key in ("concept_id", "concept", "concept_genres_map"):
      if key not in entry:
        raise DataFormatError(f"{path} line {n} lacks the key {key!r}")
    cid, name, genres = entry["concept_id"], entry["concept"], entry["concept_genres_map"]
    if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
      raise DataFormatError(f"{path} line {n} has concept_id {cid!r}, not a non-negative integer")
    if not isinstance(name, str) or not name:
      raise DataFormatError(f"{path} line {n} has no concept description (key 'concept')")
    if not isinstance(genres, dict) or not isinstance(genres.get(name), list) or not genres[name]:
      raise DataFormatError(f"{path} line {n} has no concept_genres_map entry listing a genre for its concept")
    if cid in seen:
      raise DataFormatError(f"{path} line {n} repeats concept_id {cid}")
    seen.add(cid)
    if genres[name][0] not in GENRES:
      raise DataFormatError(f"concept {cid} ({name!r}) in {path} has the unknown genre {genres[name][0]!r} "
                            f"(AxBench's genres are {', '.join(GENRES)})")
    concepts.append(Concept(cid, name, genres[name][0], entry.get("ref")))
  if not concepts:
    raise DataFormatError(f"{path} is empty")
  return tuple(sorted(concepts, key=lambda c: c.concept_id))


def read_concepts(path_or_name: str | os.PathLike) -> tuple[Concept, ...]:
  """The concepts of a dataset's generate/metadata.jsonl, sorted by concept_id (works on metadata-only folders)."""
  return _read_metadata(_folder(path_or_name) / "generate" / "metadata.jsonl")


def _read_parquet(path: pathlib.Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
  """One parquet file with `columns` checked: present, integer concept_id, no missing texts, at least one row."""
  if path.stat().st_size == 0:
    raise DataFormatError(f"{path} is empty")
  try:
    df = pd.read_parquet(path)
  except Exception as e:  # pyarrow raises several types for corrupt files; the cause stays chained
    raise DataFormatError(f"{path} is not a readable parquet file") from e
  for col in columns:
    if col not in df.columns:
      raise DataFormatError(f"{path} lacks the column {col!r} that AxBench's {what} needs")
  if df.empty:
    raise DataFormatError(f"{path} has no rows")
  if not pd.api.types.is_integer_dtype(df["concept_id"]):
    raise DataFormatError(f"{path} has a column 'concept_id' of type {df['concept_id'].dtype}, not integers")
  for col in ("input", "output"):
    missing = int(df[col].isna().sum())
    if missing:
      raise DataFormatError(f"{path} has {missing} rows with no {col!r} text")
  return df


def _train_shards(generate: pathlib.Path) -> list[pathlib.Path]:
  """AxBench's shard order: train_data.parquet first, then train_data_<k>.parquet by k."""
  shards = [p for p in generate.glob("train_data*.parquet") if _SHARD.fullmatch(p.name)]
  if not shards:
    raise DataFormatError(f"{generate} has no train_data*.parquet file")
  return sorted(shards, key=lambda p: int(_SHARD.fullmatch(p.name).group(1) or -1))


def _is_pool(train: pd.DataFrame) -> pd.Series:
  """The shared negatives (AxBench: output_concept 'EEEEE' and category 'negative'; concept_id -1 in its files)."""
  return (train["output_concept"] == POOL_CONCEPT) & (train["category"] == "negative")


def _pool(train: pd.DataFrame) -> pd.DataFrame:
  return train[_is_pool(train)]


def _unknown_ids(df: pd.DataFrame, concepts: tuple[Concept, ...], pool_ok: bool) -> list[int]:
  """Concept ids of `df` that the metadata does not list (-1, the pool, is allowed where `pool_ok`)."""
  known = {c.concept_id for c in concepts} | ({-1} if pool_ok else set())
  return sorted(int(i) for i in df["concept_id"].unique() if int(i) not in known)


def _check_concepts(train: pd.DataFrame, concepts: tuple[Concept, ...], where: str):
  """Every concept needs positives and pool negatives of its genre, else AxBench would train on one class."""
  pos = train[train["category"] == "positive"]
  pairs = set(zip(pos["concept_id"].astype(int), pos["output_concept"]))
  pool_genres = set(_pool(train)["concept_genre"])
  for c in concepts:
    if (c.concept_id, c.name) not in pairs:
      raise DataFormatError(f"concept {c.concept_id} ({c.name!r}) has no positive rows in {where}")
    if c.genre not in pool_genres:
      raise DataFormatError(f"concept {c.concept_id} ({c.name!r}) has genre {c.genre!r} but {where} has no pool "
                            f"negatives (output_concept {POOL_CONCEPT!r}, concept_id -1) of that genre")


def _read_eval(path: pathlib.Path, concepts: tuple[Concept, ...], metadata: pathlib.Path) -> pd.DataFrame:
  df = _read_parquet(path, EVAL_COLUMNS, "latent_eval_data")
  unknown = _unknown_ids(df, concepts, pool_ok=False)
  if unknown:
    raise DataFormatError(f"{path} has rows for concept_id {unknown[:10]} that {metadata} does not list")
  bad = sorted(set(df["category"]) - set(EVAL_CATEGORIES))
  if bad:
    raise DataFormatError(f"{path} has the unknown category {bad[0]!r} (expected one of {', '.join(EVAL_CATEGORIES)})")
  return df


def read_axbench(path_or_name: str | os.PathLike, max_concepts: int | None = None) -> AxbenchData:
  """Reads and validates a built-in dataset ("concept10/prod_2b_l20_v1") or a folder in AxBench's layout.

  `max_concepts` keeps the first concepts in AxBench's training order (ascending concept_id), like its
  `max_concepts` option; only those concepts are validated and kept.
  """
  if max_concepts is not None and max_concepts < 1:
    raise AxjaxError(f"max_concepts must be a positive number of concepts, not {max_concepts!r}")
  folder = _folder(path_or_name)
  metadata = folder / "generate" / "metadata.jsonl"
  all_concepts = _read_metadata(metadata)
  shards = _train_shards(folder / "generate")
  train = pd.concat([_read_parquet(p, TRAIN_COLUMNS, "train_data") for p in shards], ignore_index=True)
  where = str(shards[0]) if len(shards) == 1 else f"{folder / 'generate'}/train_data*.parquet"
  unknown = _unknown_ids(train, all_concepts, pool_ok=True)
  if unknown:
    raise DataFormatError(f"{where} has rows for concept_id {unknown[:10]} that {metadata} does not list")
  concepts = all_concepts[:max_concepts]
  _check_concepts(train, concepts, where)
  keep = {c.concept_id for c in concepts}
  train = train[train["concept_id"].isin(keep) | _is_pool(train)].reset_index(drop=True)
  eval_path = folder / "inference" / "latent_eval_data.parquet"
  latent_eval = None
  if eval_path.exists():
    df = _read_eval(eval_path, all_concepts, metadata)
    order = {c.concept_id: i for i, c in enumerate(concepts)}
    df = df[df["concept_id"].isin(keep)]
    latent_eval = df.iloc[df["concept_id"].map(order).argsort(kind="stable")].reset_index(drop=True)
  return AxbenchData(str(folder), concepts, train, latent_eval)
