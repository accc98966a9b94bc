"""A Concept500-sized (or any size) AxBench data folder made from a shipped one, for memory and time scaling.

Concept k copies the positives and eval rows of source concept k mod S under a new id and name ("<name> #k");
the shared negative pool is kept once, as in real AxBench data. The texts repeat, so the numbers measure cost,
not detection quality. Nothing here is shipped as data: benchmarks and tests build it in a temporary folder.
"""

from __future__ import annotations

import json
import os

import pandas as pd

from axjax.data.axbench_format import POOL_CONCEPT, read_axbench


def replicate_concepts(source: str, out_dir: str, num_concepts: int, *, train_positives: int | None = None,
                       eval_rows: int | None = None) -> str:
  """Writes an AxBench folder with `num_concepts` concepts into `out_dir` and returns it.

  train_positives / eval_rows: keep only the first N positives per concept and the first N eval rows per
  concept and category (default: all), so a large synthetic set stays quick to run.
  """
  data = read_axbench(source)
  train, evals = data.train, data.latent_eval
  pool = train[(train["output_concept"] == POOL_CONCEPT) & (train["category"] == "negative")]
  metadata, positives, eval_parts = [], [], []
  for k in range(num_concepts):
    concept = data.concepts[k % len(data.concepts)]
    name = f"{concept.name} #{k}"
    metadata.append({"concept_id": k, "concept": name, "concept_genres_map": {name: [concept.genre]}})
    own = train[(train["concept_id"] == concept.concept_id) & (train["category"] == "positive")
                & (train["output_concept"] == concept.name)]
    positives.append(own.head(train_positives).assign(concept_id=k, output_concept=name))
    rows = evals[evals["concept_id"] == concept.concept_id]
    rows = rows.groupby("category", sort=False).head(eval_rows) if eval_rows is not None else rows
    eval_parts.append(rows.assign(concept_id=k, output_concept=rows["output_concept"].where(
        rows["category"] != "positive", name)))
  os.makedirs(os.path.join(out_dir, "generate"), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "inference"), exist_ok=True)
  with open(os.path.join(out_dir, "generate", "metadata.jsonl"), "w") as f:
    f.writelines(json.dumps(m) + "\n" for m in metadata)
  pd.concat([pool, *positives], ignore_index=True).to_parquet(os.path.join(out_dir, "generate", "train_data.parquet"))
  pd.concat(eval_parts, ignore_index=True).to_parquet(os.path.join(out_dir, "inference", "latent_eval_data.parquet"))
  return out_dir
