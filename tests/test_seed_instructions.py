"""Seed instructions for the data generator: the builtin set drawn from the shipped Concept10 files (per genre,
held-out test split), a user's folder, and the bad folders it refuses in one sentence."""

import json

import pandas as pd
import pytest

from axjax.data.axbench_format import BUILTIN_ROOT
from axjax.data_generation.seed_instructions import GENRES, SPLITS, seed_instructions
from axjax.errors import AxjaxError


def test_builtin_instructions_are_concept10s_per_genre_with_a_disjoint_test_split():
  seeds = seed_instructions()
  assert set(seeds) == {(g, s) for g in GENRES for s in SPLITS}
  assert all(len(v) >= 200 and len(set(v)) == len(v) for v in seeds.values())
  for genre in GENRES:
    assert not set(seeds[(genre, "train")]) & set(seeds[(genre, "test")])
  train = pd.read_parquet(BUILTIN_ROOT / "concept10" / "prod_2b_l20_v1" / "generate" / "train_data.parquet")
  maths = train.loc[train["concept_genre"] == "math", "input"]
  assert set(maths) <= set(seeds[("math", "train")])  # GSM8K-style word problems, as AxBench drew them


def _folder(tmp_path, skip=None, bad=None):
  for genre in GENRES:
    for split in SPLITS:
      if (genre, split) == skip:
        continue
      lines = [json.dumps({"instruction": f"{genre} {split} {i}"}) for i in range(3)]
      lines += [lines[0]]  # a repeat, dropped
      if (genre, split) == bad:
        lines.insert(1, '{"prompt": "no instruction field"}')
      (tmp_path / f"{genre}_{split}.jsonl").write_text("\n".join(lines) + "\n")
  return str(tmp_path)


def test_a_folder_reads_one_file_per_genre_and_split(tmp_path):
  seeds = seed_instructions(_folder(tmp_path))
  assert seeds[("code", "test")] == ["code test 0", "code test 1", "code test 2"]


@pytest.mark.parametrize("skip, bad, message", [
    (("math", "test"), None, "has no math_test.jsonl (a seed-instruction folder holds one file per genre and split"),
    (None, ("text", "train"), "text_train.jsonl line 2 is not a JSON record with an \"instruction\""),
])
def test_bad_folders_are_refused_in_one_sentence(tmp_path, skip, bad, message):
  with pytest.raises(AxjaxError, match=message.replace("(", r"\(")):
    seed_instructions(_folder(tmp_path, skip, bad))


def test_axbenchs_saved_dataset_reads_its_input_column_per_split(tmp_path):
  datasets = pytest.importorskip("datasets")
  splits = {f"{g}_{s}": datasets.Dataset.from_dict({"input": [f"{g} {s} {i}" for i in range(3)] + [f"{g} {s} 0"]})
            for g in GENRES for s in SPLITS}
  datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "seed_instructions"))
  seeds = seed_instructions(str(tmp_path / "seed_instructions"))
  assert seeds[("math", "train")] == ["math train 0", "math train 1", "math train 2"]  # repeats dropped
  del splits["code_test"]
  datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "partial"))
  with pytest.raises(AxjaxError, match="has no code_test split with an \"input\" column"):
    seed_instructions(str(tmp_path / "partial"))
  with pytest.raises(AxjaxError, match="there is no seed-instruction folder at"):
    seed_instructions(str(tmp_path / "absent"))
