"""Which seed instructions a concept's data answers: AxBench's counts, genre balance, held-out test parts, draws
that depend on (seed, concept) only, and a split too small refused in one sentence."""

import pytest

from axjax.data_generation.sampling import Counts, concept_instructions, pool_instructions
from axjax.data_generation.seed_instructions import seed_instructions
from axjax.errors import AxjaxError


@pytest.fixture(scope="module")
def seeds():
  return seed_instructions()


def test_a_concepts_parts_have_axbenchs_counts_and_genres(seeds):
  parts = concept_instructions(seeds, "code", 7, seed=42, hard_negatives=4)
  assert {k: len(v) for k, v in parts.items()} == {"positives": 72, "eval_positives": 36, "eval_negatives": 36,
                                                   "hard_negatives": 4}
  assert {g for _, g in parts["positives"] + parts["eval_positives"] + parts["hard_negatives"]} == {"code"}
  genres = [g for _, g in parts["eval_negatives"]]
  assert (genres.count("text"), genres.count("code"), genres.count("math")) == (26, 5, 5)
  assert set(i for i, _ in parts["positives"]) <= set(seeds[("code", "train")])
  test_parts = [i for k in ("eval_positives", "eval_negatives", "hard_negatives") for i, _ in parts[k]]
  assert len(set(test_parts)) == len(test_parts)  # no instruction answered twice in the evaluation
  assert not set(test_parts) & {i for g in ("text", "code", "math") for i in seeds[(g, "train")]}


def test_draws_depend_on_seed_and_concept_only(seeds):
  one = concept_instructions(seeds, "text", 3, seed=42, hard_negatives=2)
  assert one == concept_instructions(seeds, "text", 3, seed=42, hard_negatives=2)
  assert one["positives"] != concept_instructions(seeds, "text", 4, seed=42, hard_negatives=2)["positives"]
  assert one["positives"] != concept_instructions(seeds, "text", 3, seed=43, hard_negatives=2)["positives"]
  pool = pool_instructions(seeds, 42)
  assert len(pool) == 216 and [g for _, g in pool].count("math") == 72


def test_a_split_too_small_is_refused(seeds):
  with pytest.raises(AxjaxError, match="the math test seed instructions hold 214 usable instructions and 300 are"):
    concept_instructions(seeds, "math", 0, seed=0, hard_negatives=0, counts=Counts(eval_positives=300))
