"""Writing generated concept data in AxBench's layout and schema, so `read_axbench` (and AxBench) read it as they
read the shipped Concept10 folders.

`generate/metadata.jsonl` (one line per concept: concept_id, concept, ref, concept_genres_map),
`generate/train_data.parquet` (the shared pool of the target model's own answers first, concept_id -1 and
output_concept EEEEE, then 72 positives per concept; concept ids 500k to 500k + 499 go to
`train_data_<k>.parquet`, as AxBench's) by `write_train`, and `inference/latent_eval_data.parquet` (per concept
its positives, negatives and hard negatives, with sae_link and sae_id) by `write_latent`. Every file is written
atomically, so a killed run leaves either the old or the new.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Sequence

import pandas as pd

from axjax import atomic_files

EMPTY_CONCEPT = "EEEEE"  # AxBench's output_concept of the shared negatives
SHARD_CONCEPTS = 500  # concepts per train_data file, as AxBench
TRAIN_COLUMNS = ("input", "output", "output_concept", "concept_genre", "category", "dataset_category", "concept_id")


@dataclasses.dataclass(frozen=True)
class TrainPart:
  """One concept's training data (`--mode=train`): its genres and its positives, (instruction, response, genre)
  triples on train-split instructions of its genre."""

  concept_id: int
  concept: str
  ref: str | None
  genres: Sequence[str]
  positives: Sequence[Sequence[str]]


@dataclasses.dataclass(frozen=True)
class LatentPart:
  """One concept's latent-eval data (`--mode=latent`): (instruction, response, genre) triples on test-split
  instructions, and its hard negatives' contrast (word, meaning) pairs, one per hard-negative row."""

  concept_id: int
  concept: str
  ref: str | None
  eval_positives: Sequence[Sequence[str]]  # the concept's genre
  eval_negatives: Sequence[Sequence[str]]  # genre-balanced, written without the concept
  hard_negatives: Sequence[Sequence[str]] = ()
  contrasts: Sequence[Sequence[str]] = ()


def _rows(triples, concept: str, category: str, concept_id: int, output_concepts=None) -> pd.DataFrame:
  frame = pd.DataFrame(list(triples), columns=["input", "output", "concept_genre"])
  return frame.assign(output_concept=list(output_concepts) if output_concepts is not None else concept,
                      category=category, dataset_category="instruction",
                      concept_id=pd.Series([concept_id] * len(frame), dtype="int64"))[list(TRAIN_COLUMNS)]


def _feature(ref: str | None) -> int:
  """The feature index at the end of a Neuronpedia URL (AxBench's sae_id), -1 without one."""
  match = re.search(r"/(\d+)$", ref or "")
  return int(match.group(1)) if match else -1


def write_train(folder: str, pool: Sequence[Sequence[str]], concepts: Sequence[TrainPart]) -> None:
  """metadata.jsonl and the train_data shards of `concepts` (in concept_id order) with the shared negative `pool`."""
  lines = [json.dumps({"concept_id": c.concept_id, "concept": c.concept, "ref": c.ref or "null",
                       "concept_genres_map": {c.concept: list(c.genres)}}) for c in concepts]
  atomic_files.write_text(os.path.join(folder, "generate", "metadata.jsonl"), "".join(f"{line}\n" for line in lines))
  for k in sorted({0} | {c.concept_id // SHARD_CONCEPTS for c in concepts}):  # AxBench's concept_id // 500
    parts = [_rows(pool, EMPTY_CONCEPT, "negative", -1)] if k == 0 else []
    parts += [_rows(c.positives, c.concept, "positive", c.concept_id) for c in concepts
              if c.concept_id // SHARD_CONCEPTS == k]
    name = "train_data.parquet" if k == 0 else f"train_data_{k}.parquet"
    atomic_files.write_parquet(os.path.join(folder, "generate", name), pd.concat(parts, ignore_index=True))


def write_latent(folder: str, concepts: Sequence[LatentPart]) -> None:
  """inference/latent_eval_data.parquet of `concepts` (in concept_id order)."""
  evals = []
  for c in concepts:
    parts = [_rows(c.eval_positives, c.concept, "positive", c.concept_id),
             _rows(c.eval_negatives, c.concept, "negative", c.concept_id),
             _rows(c.hard_negatives, c.concept, "hard negative", c.concept_id,
                   [f"{w}//{m}" for w, m in c.contrasts])]
    frame = pd.concat(parts, ignore_index=True)
    evals.append(frame.assign(sae_link=c.ref or "null",
                              sae_id=pd.Series([_feature(c.ref)] * len(frame), dtype="int64")))
  atomic_files.write_parquet(os.path.join(folder, "inference", "latent_eval_data.parquet"),
                             pd.concat(evals, ignore_index=True))
