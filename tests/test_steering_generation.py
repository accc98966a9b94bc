"""Steered generation of the job's rows: resumable by batch, independent of batching, common random numbers."""

import os

import numpy as np
import pytest

import axjax
from axjax.steering_eval.generate_rows import generate_rows
from axjax.steering_eval.protocol import SteeringProtocol
from axjax.steering_eval.rows import steering_rows

PROTOCOL = SteeringProtocol(factors=(0.0, 40.0), instructions_per_concept=2, select_count=1, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny(tiny_with_tokenizer):
  return axjax.load(tiny_with_tokenizer)


def job(tiny, methods=("A", "B")):
  rows = steering_rows(list(methods), [(0, "cats"), (1, "rain")], ["Name a colour.", "Count to three.", "Hi"],
                       PROTOCOL)
  rng = np.random.default_rng(0)
  per_concept = {c: rng.normal(size=tiny.config.hidden_size).astype(np.float32) for c in (0, 1)}
  vectors = np.stack([per_concept[c] for c in rows["concept_id"]])
  return rows, vectors, rows["factor"].to_numpy(np.float32)


def run(tiny, rows, vectors, strengths, shards, batch_size=4):
  return generate_rows(tiny, rows, vectors, strengths, layer=1, protocol=PROTOCOL, seed=3, batch_size=batch_size,
                       shard_dir=str(shards))


def test_resume_redoes_only_missing_batches_and_gives_the_same_rows(tiny, tmp_path):
  rows, vectors, strengths = job(tiny)
  full = run(tiny, rows, vectors, strengths, tmp_path / "a")
  assert full["row_id"].tolist() == rows["row_id"].tolist()
  assert full["generated_tokens"].between(0, PROTOCOL.max_new_tokens).all()
  shards = sorted(os.listdir(tmp_path / "a"))
  assert len(shards) == 4  # 16 rows in batches of 4
  os.remove(tmp_path / "a" / shards[1])  # as if killed before this batch was written
  kept = {s: os.path.getmtime(tmp_path / "a" / s) for s in shards if s != shards[1]}
  again = run(tiny, rows, vectors, strengths, tmp_path / "a")
  assert {s: os.path.getmtime(tmp_path / "a" / s) for s in kept} == kept  # finished batches not redone
  assert again.equals(full)


def test_rows_do_not_depend_on_batching_and_methods_share_random_numbers(tiny, tmp_path):
  rows, vectors, strengths = job(tiny)
  by4 = run(tiny, rows, vectors, strengths, tmp_path / "b4")
  by3 = run(tiny, rows, vectors, strengths, tmp_path / "b3", batch_size=3)
  assert by4["generation"].tolist() == by3["generation"].tolist()
  same = by4.merge(rows, on="row_id")
  a, b = same[same.method == "A"], same[same.method == "B"]
  assert a["generation"].tolist() == b["generation"].tolist()  # same vectors, same keys: same samples
  unsteered = same[same.factor == 0.0]["generation"].tolist()
  steered = same[same.factor == 40.0]["generation"].tolist()
  assert unsteered != steered
  finite = same["perplexity"][same["generated_tokens"] > 0]
  assert np.isfinite(finite).all() and (finite > 1).all()
