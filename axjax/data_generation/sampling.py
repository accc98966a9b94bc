"""Which seed instructions each part of a concept's data answers, with AxBench's counts (reference section 3).

Per concept: 72 training positives on train-split instructions of its genre; for the latent evaluation 36
positives on test-split instructions of its genre and 36 negatives on genre-balanced test instructions
(int(36 x 0.15) = 5 math, 5 code, the rest text); hard negatives on further test instructions of its genre, one
per contrast concept. The shared pool: 72 train-split instructions per genre, answered by the target model.
Draws come from numpy generators of (seed, concept id), so a concept's instructions do not depend on which other
concepts a run holds (AxBench draws from Python's global `random`: the same counts, other instructions).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from axjax.data_generation.seed_instructions import GENRES
from axjax.errors import AxjaxError

Seeds = dict[tuple[str, str], list[str]]
POOL_ID = -1  # the generator's id for the shared pool's draws


@dataclasses.dataclass(frozen=True)
class Counts:
  """AxBench's sizes: num_of_examples 144 (half positives), latent_num_of_examples 36, 15% math and code."""

  train_positives: int = 72
  pool_per_genre: int = 72
  eval_positives: int = 36
  eval_negatives: int = 36
  other_genre_share: float = 0.15

  def negative_genres(self) -> dict[str, int]:
    each = int(self.eval_negatives * self.other_genre_share)
    return {"text": self.eval_negatives - 2 * each, "code": each, "math": each}


def _draw(seeds: Seeds, genre: str, split: str, count: int, rng: np.random.Generator,
          exclude: set[str] = frozenset()) -> list[str]:
  pool = [i for i in seeds[(genre, split)] if i not in exclude]
  if len(pool) < count:
    raise AxjaxError(f"the {genre} {split} seed instructions hold {len(pool)} usable instructions and "
                     f"{count} are needed: pass a larger seed-instruction folder or fewer examples")
  return [pool[k] for k in rng.choice(len(pool), count, replace=False)]


def pool_instructions(seeds: Seeds, seed: int, counts: Counts = Counts()) -> list[tuple[str, str]]:
  """(instruction, genre) of the shared negative pool: `pool_per_genre` train-split instructions per genre."""
  rng = np.random.default_rng([seed, 2 ** 31 + POOL_ID])
  return [(i, g) for g in GENRES for i in _draw(seeds, g, "train", counts.pool_per_genre, rng)]


def concept_instructions(seeds: Seeds, genre: str, concept_id: int, seed: int, hard_negatives: int,
                         counts: Counts = Counts()) -> dict[str, list[tuple[str, str]]]:
  """(instruction, genre) per part of one concept's data: "positives", "eval_positives", "eval_negatives",
  "hard_negatives"; the test-split parts share no instruction."""
  if genre not in GENRES:
    raise AxjaxError(f"unknown genre {genre!r}: choose from {', '.join(GENRES)}")
  rng = np.random.default_rng([seed, concept_id])
  positives = _draw(seeds, genre, "train", counts.train_positives, rng)
  test = _draw(seeds, genre, "test", counts.eval_positives + hard_negatives, rng)
  used = set(test)
  negatives = [(i, g) for g, n in counts.negative_genres().items()
               for i in _draw(seeds, g, "test", n, rng, exclude=used)]
  return {"positives": [(i, genre) for i in positives],
          "eval_positives": [(i, genre) for i in test[:counts.eval_positives]],
          "eval_negatives": negatives,
          "hard_negatives": [(i, genre) for i in test[counts.eval_positives:]]}
