"""Reading AxBench's folder format: the shipped datasets, AxBench's training sets, and malformed inputs."""

import json
import shutil

import pandas as pd
import pytest

from axjax.data import (AxbenchData, DataFormatError, alpaca_instructions, builtin_datasets, read_axbench,
                        read_concepts)
from axjax.data.axbench_format import BUILTIN_ROOT

# (concepts, train rows, eval rows, hard negatives), from AxBench's files
SIZES = {
    "concept10/prod_2b_l10_v1": (10, 936, 770, 50),
    "concept10/prod_2b_l20_v1": (10, 936, 755, 35),
    "concept10/prod_9b_l20_v1": (10, 936, 760, 40),
    "concept10/prod_9b_l31_v1": (10, 936, 768, 48),
    "conceptFD/prod_2b_l10_v1": (17, 1440, 1298, 74),
    "conceptFD/prod_2b_l20_v1": (16, 1368, 1225, 73),
}


def test_builtin_datasets():
  assert builtin_datasets() == tuple(sorted(SIZES))


@pytest.mark.parametrize("name", sorted(SIZES))
def test_shipped_sizes(name):
  data = read_axbench(name)
  concepts, train, evals, hard = SIZES[name]
  assert len(data.concepts) == concepts and len(data.train) == train
  assert len(data.latent_eval) == evals
  assert (data.latent_eval["category"] == "hard negative").sum() == hard
  assert [c.concept_id for c in data.concepts] == list(range(concepts))


def test_concept_fields():
  c = read_axbench("concept10/prod_2b_l20_v1").concept(0)
  assert c.name == "references to rental services and associated equipment"
  assert c.genre == "text"
  assert c.ref == "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/16038"


@pytest.mark.parametrize("name", ["concept10/prod_9b_l31_v1", "conceptFD/prod_2b_l10_v1"])
def test_training_rows_are_72_positives_then_72_genre_negatives(name):
  data = read_axbench(name)
  for c in data.concepts:
    rows = data.training_rows(c.concept_id)
    pos, neg = rows.iloc[:72], rows.iloc[72:]
    assert len(rows) == 144 and (pos["label"] == 1).all() and (neg["label"] == 0).all()
    assert (pos["concept_id"] == c.concept_id).all() and (pos["output_concept"] == c.name).all()
    assert (neg["concept_id"] == -1).all() and (neg["output_concept"] == "EEEEE").all()
    assert (neg["concept_genre"] == c.genre).all()
    pool = data.train[(data.train["concept_id"] == -1) & (data.train["concept_genre"] == c.genre)]
    assert neg["input"].tolist() == pool["input"].tolist()  # file order, as AxBench keeps it


def test_max_concepts_and_max_examples():
  data = read_axbench("concept10/prod_2b_l20_v1", max_concepts=3)
  assert [c.concept_id for c in data.concepts] == [0, 1, 2]
  assert len(data.train) == 216 + 3 * 72
  assert set(data.latent_eval["concept_id"]) == {0, 1, 2}
  rows = data.training_rows(1, max_examples=10)
  assert rows["label"].tolist() == [1] * 5 + [0] * 5


def test_read_by_path_and_metadata_only():
  data = read_axbench(BUILTIN_ROOT / "concept10" / "prod_2b_l20_v1")
  assert isinstance(data, AxbenchData) and len(data.concepts) == 10
  assert len(read_concepts("concept500/prod_2b_l20_v1")) == 500
  assert len(read_concepts("concept500/prod_9b_l20_v1")) == 500


def test_alpaca_instructions():
  instructions = alpaca_instructions()
  assert len(instructions) == 805 and all(isinstance(s, str) and s for s in instructions)
  assert instructions[1] == "How did US states get their names?"


# --- a small copy of concept10/prod_2b_l20_v1 (concepts 0 and 1) to break in each test ------------------------

SOURCE = BUILTIN_ROOT / "concept10" / "prod_2b_l20_v1"


@pytest.fixture
def folder(tmp_path):
  """A two-concept AxBench folder; concept 0 is 'text', concept 1 is 'text'."""
  (tmp_path / "generate").mkdir()
  (tmp_path / "inference").mkdir()
  train = pd.read_parquet(SOURCE / "generate" / "train_data.parquet")
  train[train["concept_id"] <= 1].to_parquet(tmp_path / "generate" / "train_data.parquet")
  lines = (SOURCE / "generate" / "metadata.jsonl").read_text().splitlines()[:2]
  (tmp_path / "generate" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
  evals = pd.read_parquet(SOURCE / "inference" / "latent_eval_data.parquet")
  evals[evals["concept_id"] <= 1].to_parquet(tmp_path / "inference" / "latent_eval_data.parquet")
  return tmp_path


def _replace(path, column, old, new):
  """Rewrites one parquet file with `old` replaced by `new` in `column`."""
  df = pd.read_parquet(path)
  df[column] = df[column].replace(old, new)
  df.to_parquet(path)


def _error(folder) -> str:
  with pytest.raises(DataFormatError) as info:
    read_axbench(folder)
  return str(info.value)


def test_small_folder_reads(folder):
  data = read_axbench(folder)
  assert len(data.concepts) == 2 and len(data.train) == 216 + 144 and len(data.latent_eval) == 150


def test_shards_read_in_axbench_order(folder):
  train = pd.read_parquet(folder / "generate" / "train_data.parquet")
  train[train["concept_id"] == 1].to_parquet(folder / "generate" / "train_data_0.parquet")
  train[train["concept_id"] <= 0].to_parquet(folder / "generate" / "train_data.parquet")
  train.head(0).to_parquet(folder / "generate" / "train_data_combined.parquet")  # AxBench skips these
  data = read_axbench(folder)
  assert data.train["concept_id"].tolist() == [-1] * 216 + [0] * 72 + [1] * 72


def test_not_a_folder():
  assert _error("/no/such/folder").startswith("'/no/such/folder' is neither a folder nor a built-in dataset name")


def test_no_metadata(folder):
  (folder / "generate" / "metadata.jsonl").unlink()
  assert _error(folder) == (
      f"{folder} has no generate/metadata.jsonl (AxBench's layout is generate/{{train_data*.parquet, "
      "metadata.jsonl} and inference/latent_eval_data.parquet)")


def test_no_train_data(folder):
  (folder / "generate" / "train_data.parquet").unlink()
  assert _error(folder) == f"{folder / 'generate'} has no train_data*.parquet file"


_TRAIN, _EVAL = ("generate", "train_data.parquet"), ("inference", "latent_eval_data.parquet")


@pytest.mark.parametrize("where, corrupt, message", [
    (_TRAIN, lambda p: pd.read_parquet(p).drop(columns="concept_genre").to_parquet(p),
     "{path} lacks the column 'concept_genre' that AxBench's train_data needs"),
    (_EVAL, lambda p: pd.read_parquet(p).drop(columns="category").to_parquet(p),
     "{path} lacks the column 'category' that AxBench's latent_eval_data needs"),
    (_TRAIN, lambda p: p.write_bytes(b""), "{path} is empty"),
    (_EVAL, lambda p: pd.read_parquet(p).head(0).to_parquet(p), "{path} has no rows"),
    (_TRAIN, lambda p: p.write_bytes(b"PAR1 this is not parquet"), "{path} is not a readable parquet file"),
], ids=["missing column", "missing eval column", "empty file", "no rows", "unreadable parquet"])
def test_malformed_parquet(folder, where, corrupt, message):
  path = folder.joinpath(*where)
  corrupt(path)
  assert _error(folder) == message.format(path=path)


def test_missing_text(folder):
  path = folder / "generate" / "train_data.parquet"
  df = pd.read_parquet(path)
  df.loc[3, "output"] = None
  df.to_parquet(path)
  assert _error(folder) == f"{path} has 1 rows with no 'output' text"


def test_empty_metadata(folder):
  path = folder / "generate" / "metadata.jsonl"
  path.write_text("\n")
  assert _error(folder) == f"{path} is empty"


def test_metadata_not_json(folder):
  path = folder / "generate" / "metadata.jsonl"
  path.write_text(path.read_text().splitlines()[0] + "\n{\"concept_id\": 1,\n")
  assert _error(folder) == f"{path} line 2 is not valid JSON (Expecting property name enclosed in double quotes)"


def test_metadata_missing_key(folder):
  path = folder / "generate" / "metadata.jsonl"
  lines = path.read_text().splitlines()
  entry = json.loads(lines[1])
  del entry["concept_genres_map"]
  path.write_text(lines[0] + "\n" + json.dumps(entry) + "\n")
  assert _error(folder) == f"{path} line 2 lacks the key 'concept_genres_map'"


def test_unknown_genre(folder):
  path = folder / "generate" / "metadata.jsonl"
  lines = path.read_text().splitlines()
  entry = json.loads(lines[1])
  entry["concept_genres_map"][entry["concept"]] = ["poetry"]
  path.write_text(lines[0] + "\n" + json.dumps(entry) + "\n")
  assert _error(folder) == (f"concept 1 ({entry['concept']!r}) in {path} has the unknown genre 'poetry' "
                            "(AxBench's genres are text, code, math)")


def test_genre_without_pool_negatives(folder):
  path = folder / "generate" / "train_data.parquet"
  df = pd.read_parquet(path)
  df[~((df["concept_id"] == -1) & (df["concept_genre"] == "text"))].to_parquet(path)
  name = read_concepts(folder)[0].name
  assert _error(folder) == (f"concept 0 ({name!r}) has genre 'text' but {path} has no pool negatives "
                            "(output_concept 'EEEEE', concept_id -1) of that genre")


def test_concept_without_positives(folder):
  path = folder / "generate" / "train_data.parquet"
  df = pd.read_parquet(path)
  df[df["concept_id"] != 1].to_parquet(path)
  name = read_concepts(folder)[1].name
  assert _error(folder) == f"concept 1 ({name!r}) has no positive rows in {path}"


def test_max_concepts_skips_later_concepts(folder):
  path = folder / "generate" / "train_data.parquet"
  df = pd.read_parquet(path)
  df[df["concept_id"] != 1].to_parquet(path)
  assert len(read_axbench(folder, max_concepts=1).concepts) == 1


def test_train_concept_absent_from_metadata(folder):
  path = folder / "generate" / "train_data.parquet"
  _replace(path, "concept_id", 1, 7)
  metadata = folder / "generate" / "metadata.jsonl"
  assert _error(folder) == f"{path} has rows for concept_id [7] that {metadata} does not list"


def test_eval_concept_absent_from_metadata(folder):
  path = folder / "inference" / "latent_eval_data.parquet"
  _replace(path, "concept_id", 1, 12)
  metadata = folder / "generate" / "metadata.jsonl"
  assert _error(folder) == f"{path} has rows for concept_id [12] that {metadata} does not list"


def test_unknown_eval_category(folder):
  path = folder / "inference" / "latent_eval_data.parquet"
  _replace(path, "category", "hard negative", "hard_negative")
  assert _error(folder) == (f"{path} has the unknown category 'hard_negative' "
                            "(expected one of positive, negative, hard negative)")


def test_eval_is_optional(folder):
  shutil.rmtree(folder / "inference")
  assert read_axbench(folder).latent_eval is None
