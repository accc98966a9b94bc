"""Generated data written in AxBench's layout: read back by axjax's reader, and by pandas with the shipped
Concept10 files' columns and dtypes."""

import dataclasses
import json

import pandas as pd

from axjax.data.axbench_format import BUILTIN_ROOT, read_axbench
from axjax.data_generation.folder import LatentPart, TrainPart, write_latent, write_train

SHIPPED = BUILTIN_ROOT / "concept10" / "prod_2b_l20_v1"


def triples(tag, genre, n):
  return [(f"{tag} instruction {i}", f"{tag} response {i}", genre) for i in range(n)]


def concepts():
  pool = triples("pool text", "text", 4) + triples("pool code", "code", 4) + triples("pool math", "math", 4)
  rent = ("references to rental services", "https://www.neuronpedia.org/gemma-2-2b/20-res-16k/16038")
  loops = ("for loops in Python", None)
  train = [TrainPart(0, *rent, ("text",), triples("rent", "text", 4)),
           TrainPart(1, *loops, ("code",), triples("loop", "code", 4))]
  latent = [LatentPart(0, *rent, triples("rent eval", "text", 3), triples("neg", "text", 2) + triples("neg", "math", 1),
                       triples("hard", "text", 1), [("rent", "a tear in fabric")]),
            LatentPart(1, *loops, triples("loop eval", "code", 3), triples("neg", "text", 3))]
  return pool, train, latent


def write_folder(folder):
  pool, train, latent = concepts()
  write_train(folder, pool, train)
  write_latent(folder, latent)


def test_a_written_folder_reads_back_as_axbench_data(tmp_path):
  write_folder(str(tmp_path))
  data = read_axbench(str(tmp_path))
  assert [(c.concept_id, c.name, c.genre) for c in data.concepts] == [
      (0, "references to rental services", "text"), (1, "for loops in Python", "code")]
  rows, labels = data.training_row_ids(1)  # the concept's positives, then the pool negatives of its genre
  assert labels.tolist() == [1] * 4 + [0] * 4
  assert set(data.train.iloc[rows[labels == 0]]["input"]) == {f"pool code instruction {i}" for i in range(4)}
  evals = data.latent_eval
  assert evals.groupby("concept_id")["category"].value_counts().to_dict() == {
      (0, "positive"): 3, (0, "negative"): 3, (0, "hard negative"): 1, (1, "positive"): 3, (1, "negative"): 3}
  hard = evals[evals["category"] == "hard negative"].iloc[0]
  assert hard["output_concept"] == "rent//a tear in fabric" and hard["sae_id"] == 16038


def test_files_have_the_shipped_files_columns_and_dtypes(tmp_path):
  write_folder(str(tmp_path))
  for part in ("generate/train_data.parquet", "inference/latent_eval_data.parquet"):
    ours, theirs = pd.read_parquet(tmp_path / part), pd.read_parquet(SHIPPED / part)
    assert ours.dtypes.to_dict() == theirs.dtypes.to_dict(), part
  train = pd.read_parquet(tmp_path / "generate" / "train_data.parquet")
  assert (train["concept_id"].iloc[:12] == -1).all() and (train["output_concept"].iloc[:12] == "EEEEE").all()
  lines = [json.loads(line) for line in (tmp_path / "generate" / "metadata.jsonl").read_text().splitlines()]
  shipped = json.loads((SHIPPED / "generate" / "metadata.jsonl").read_text().splitlines()[0])
  assert [set(line) for line in lines] == [set(shipped)] * 2
  assert lines[1] == {"concept_id": 1, "concept": "for loops in Python", "ref": "null",
                      "concept_genres_map": {"for loops in Python": ["code"]}}


def test_concepts_from_id_500_on_go_to_the_next_train_file(tmp_path):
  pool, (rent, loops), _ = concepts()
  write_train(str(tmp_path), pool, [rent, dataclasses.replace(loops, concept_id=501)])
  first = pd.read_parquet(tmp_path / "generate" / "train_data.parquet")
  second = pd.read_parquet(tmp_path / "generate" / "train_data_1.parquet")
  assert set(first["concept_id"]) == {-1, 0} and set(second["concept_id"]) == {501}
  assert [c.concept_id for c in read_axbench(str(tmp_path)).concepts] == [0, 501]
