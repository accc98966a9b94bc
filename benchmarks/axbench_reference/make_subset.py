"""Writes a small AxBench-format data folder (for quick validation runs of run.sh).

  python make_subset.py DATA_DIR OUT_DIR --concepts 1 --train_per_class 6 --eval_per_class 6

Keeps the first `concepts` concepts (metadata, train positives, eval rows), the first `train_per_class`
positives per concept and shared negatives per genre, and the first `eval_per_class` eval rows per concept
and category (positive, negative, hard negative). Row order and content are unchanged.
"""

import argparse
import json
import os

import pandas as pd


def main() -> None:
  """Reads DATA_DIR/{generate,inference} and writes the same layout, subsetted, under OUT_DIR."""
  p = argparse.ArgumentParser()
  p.add_argument("data_dir")
  p.add_argument("out_dir")
  p.add_argument("--concepts", type=int, default=1)
  p.add_argument("--train_per_class", type=int, default=6)
  p.add_argument("--eval_per_class", type=int, default=6)
  a = p.parse_args()
  for sub in ("generate", "inference"):
    os.makedirs(os.path.join(a.out_dir, sub), exist_ok=True)
  with open(os.path.join(a.data_dir, "generate", "metadata.jsonl")) as f:
    meta = [json.loads(line) for line in f][:a.concepts]
  with open(os.path.join(a.out_dir, "generate", "metadata.jsonl"), "w") as f:
    f.writelines(json.dumps(m) + "\n" for m in meta)
  keep = {m["concept_id"] for m in meta}
  train = pd.read_parquet(os.path.join(a.data_dir, "generate", "train_data.parquet"))
  neg = train[train.concept_id == -1].groupby("concept_genre", sort=False).head(a.train_per_class)
  pos = train[train.concept_id.isin(keep)].groupby("concept_id", sort=False).head(a.train_per_class)
  train = train.loc[sorted(set(neg.index) | set(pos.index))]
  train.to_parquet(os.path.join(a.out_dir, "generate", "train_data.parquet"), index=False)
  ev = pd.read_parquet(os.path.join(a.data_dir, "inference", "latent_eval_data.parquet"))
  ev = ev[ev.concept_id.isin(keep)].groupby(["concept_id", "category"], sort=False).head(a.eval_per_class)
  ev.to_parquet(os.path.join(a.out_dir, "inference", "latent_eval_data.parquet"), index=False)
  print(f"{len(meta)} concepts, {len(train)} train rows, {len(ev)} eval rows -> {a.out_dir}")


if __name__ == "__main__":
  main()
