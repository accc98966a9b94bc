"""AxBench's `generate` stage: a concept list in, an AxBench folder out that `experiments.detect` and
`experiments.steer` read unchanged (reference sections 1.1-1.4 and 3).

- train: the shared pool (the target model's own greedy answers, 1.5 x output_length new tokens, to 72 train
  instructions per genre), then per concept its genres and 72 responses with the concept;
- latent: per concept its contrast concepts, 36 positives and 36 genre-balanced negatives on test instructions,
  and a hard negative per contrast concept;
- pairs: the target model's own greedy answer to each training positive's instruction (RePS's losing output),
  written as AxBench's `dpo_train_data.parquet` and kept in the response cache the preference methods read.

Each concept asks its own prompts (never batched with another concept's), so its data does not depend on which
concepts a run holds; a reply that cannot be used is asked again (`retries` independent draws), and a concept still
short of a response is recorded as skipped with the reason, never written half-done.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import pandas as pd

from axjax import atomic_files
from axjax.data_generation import run_state
from axjax.data_generation.concept_lists import ListedConcept
from axjax.data_generation.concept_steps import concept_genres, contrast_concepts
from axjax.data_generation.folder import EMPTY_CONCEPT, LatentPart, TrainPart, write_latent, write_train
from axjax.data_generation.responses import with_concept, with_contrast, with_retries, without_concept
from axjax.data_generation.sampling import Counts, Seeds, concept_instructions, pool_instructions
from axjax.errors import AxjaxError
from axjax.loading.load import LoadedModel
from axjax.methods.fit import Progress
from axjax.methods.own_responses import RESPONSE_TOKENS, own_responses
from axjax.methods.prompting import Writer

MODES = ("train", "latent", "pairs")
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """AxBench's production generation settings (seed 42, output_length 128, 144 training and 36 + 36 eval examples
  per concept); `retries`: further draws of a reply that could not be used; `pair_tokens`: the length of the
  target model's answers in pairs mode (RePS trains on up to 512)."""

  seed: int = 42
  output_length: int = 128
  counts: Counts = Counts()
  retries: int = 2
  pair_tokens: int = RESPONSE_TOKENS

  def __post_init__(self):
    if self.output_length < 1 or self.retries < 0 or self.pair_tokens < 1:
      raise AxjaxError("generation needs output_length >= 1, retries >= 0 and pair_tokens >= 1")

  @property
  def pool_tokens(self) -> int:
    return int(1.5 * self.output_length)  # AxBench's get_model_continues length

  def settings(self, concepts: Sequence[ListedConcept], model: LoadedModel, llm: str, seeds: str) -> dict[str, Any]:
    """What a folder is generated for (`run_state.check_settings` refuses a rerun with anything else)."""
    return {"concepts": [[c.description, c.ref] for c in concepts], "target_model": model.name, "llm": llm,
            "seed_instructions": seeds, "seed": self.seed, "output_length": self.output_length,
            "counts": dataclasses.asdict(self.counts), "retries": self.retries, "pair_tokens": self.pair_tokens}


@dataclasses.dataclass(frozen=True)
class Job:
  """One generation: the folder, the concepts (id = position in the list), the target model, the LLM and the seed
  instructions."""

  folder: str
  concepts: Sequence[ListedConcept]
  model: LoadedModel
  writer: Writer
  seeds: Seeds
  config: GenerationConfig = GenerationConfig()
  log: Log = print
  progress: Progress | None = None


def _responses(respond, items, retries: int, what: str) -> tuple[list[str], str | None]:
  """The responses to `items`, or ([], why the concept is skipped) when some stayed unusable after the retries."""
  out = with_retries(respond, items, retries)
  failed = sum(r is None for r in out)
  if failed:
    return [], f"{failed} of {len(out)} {what} stayed empty after {retries} retries"
  return out, None


def _triples(asked: Sequence[tuple[str, str]], outs: Sequence[str]) -> list[list[str]]:
  """[instruction, response, genre] rows from the (instruction, genre) pairs asked and their responses."""
  return [[i, o, g] for (i, g), o in zip(asked, outs)]


def _concept_train(job: Job, concept_id: int, concept: ListedConcept) -> dict[str, Any]:
  """A concept's training record: genres and positives, or why it is skipped."""
  cfg, tokenizer, name = job.config, job.model.tokenizer, concept.description
  genres = concept_genres(job.writer, [name])[name]
  asked = concept_instructions(job.seeds, genres[0], concept_id, cfg.seed, 0, cfg.counts)["positives"]
  outs, skipped = _responses(lambda items, draw: with_concept(job.writer, tokenizer, name, [i for i, _ in items],
                                                              cfg.output_length, draw),
                             asked, cfg.retries, "responses with the concept")
  if skipped:
    return {"skipped": skipped}
  return {"genres": genres, "positives": _triples(asked, outs)}


def _concept_latent(job: Job, concept_id: int, concept: ListedConcept, genre: str) -> dict[str, Any]:
  """A concept's latent-eval record: positives, negatives, hard negatives and their contrasts, or why it is
  skipped."""
  cfg, tokenizer, name, writer = job.config, job.model.tokenizer, concept.description, job.writer
  contrasts = contrast_concepts(writer, [name])[name]
  parts = concept_instructions(job.seeds, genre, concept_id, cfg.seed, len(contrasts), cfg.counts)
  plain = lambda respond: (lambda items, draw: respond(writer, tokenizer, name, [i for i, _ in items],
                                                       cfg.output_length, draw))
  positives, skipped = _responses(plain(with_concept), parts["eval_positives"], cfg.retries,
                                  "eval responses with the concept")
  if not skipped:
    negatives, skipped = _responses(plain(without_concept), parts["eval_negatives"], cfg.retries,
                                    "responses without the concept")
  if not skipped:
    hard, skipped = _responses(
        lambda items, draw: with_contrast(writer, tokenizer, name, [c for c, _ in items], [i for _, (i, _) in items],
                                          cfg.output_length, draw),
        list(zip(contrasts, parts["hard_negatives"])), cfg.retries, "hard-negative responses")
  if skipped:
    return {"skipped": skipped}
  return {"eval_positives": _triples(parts["eval_positives"], positives),
          "eval_negatives": _triples(parts["eval_negatives"], negatives),
          "hard_negatives": _triples(parts["hard_negatives"], hard), "contrasts": [list(c) for c in contrasts]}


def _pool(job: Job) -> list[list[str]]:
  """The shared negatives (instruction, own answer, genre), kept in generate/pool.json once made."""
  path = os.path.join(job.folder, "generate", "pool.json")
  if os.path.exists(path):
    return atomic_files.read_json(path)
  asked = pool_instructions(job.seeds, job.config.seed, job.config.counts)
  job.log(f"shared pool: the target model answers {len(asked)} instructions")
  answers = own_responses(job.model, [i for i, _ in asked], max_new_tokens=job.config.pool_tokens,
                          progress=None if job.progress is None else
                          lambda done, total: job.progress("shared pool (own answers)", done, total))
  pool = [[i, a, g] for (i, g), a in zip(asked, answers)]
  atomic_files.write_json(path, pool)
  return pool


class _Pacer:
  """Says when to rewrite the data files: after the first concept, then once at least `min_s` (or ten times the
  last rewrite's duration) has passed, so rewriting a large folder never takes more than a tenth of the run."""

  def __init__(self, min_s: float = 60.0):
    self.min_s, self.last, self.cost = min_s, None, 0.0

  def due(self) -> bool:
    return self.last is None or time.monotonic() - self.last >= max(self.min_s, 10 * self.cost)

  def wrote(self, started: float) -> None:
    self.last = time.monotonic()
    self.cost = self.last - started


def _each_concept(job: Job, mode: str, make: Callable[[int, ListedConcept], dict[str, Any]],
                  write: Callable[[dict[int, dict[str, Any]]], None], describe: Callable[[dict[str, Any]], str]
                  ) -> None:
  """`make` the record of every concept of `mode` without one (written as soon as made), then `write` the data
  files from all records: paced while concepts finish (a killed run leaves readable files of the concepts
  written so far; the records resume the rest) and always at the end."""
  records = run_state.read_records(job.folder, mode, len(job.concepts))
  pacer = _Pacer()
  for cid, concept in enumerate(job.concepts):
    if cid in records:
      continue
    records[cid] = make(cid, concept)
    run_state.write_record(job.folder, mode, cid, records[cid])
    job.log(f"{mode} {cid + 1}/{len(job.concepts)} {concept.description[:60]!r}: " + (
        f"skipped ({records[cid]['skipped']})" if "skipped" in records[cid] else describe(records[cid])))
    if pacer.due():
      started = time.monotonic()
      write(records)
      pacer.wrote(started)
  write(records)  # also when nothing was left to make: a killed run may have stopped before writing its last


def _kept(job: Job, records: dict[int, dict[str, Any]]) -> list[tuple[int, ListedConcept, dict[str, Any]]]:
  """(id, concept, record) of the concepts with data, in id order."""
  return [(cid, job.concepts[cid], r) for cid, r in sorted(records.items()) if "skipped" not in r]


def _train_parts(job: Job, records: dict[int, dict[str, Any]]) -> list[TrainPart]:
  return [TrainPart(cid, c.description, c.ref, r["genres"], r["positives"]) for cid, c, r in _kept(job, records)]


def generate_train(job: Job) -> None:
  """Training data for every concept without a training record: metadata.jsonl and train_data*.parquet."""
  pool = _pool(job)
  _each_concept(job, "train", lambda cid, concept: _concept_train(job, cid, concept),
                lambda records: write_train(job.folder, pool, _train_parts(job, records)),
                lambda record: f"{len(record['positives'])} positives")


def require_training(folder: str, concepts: Sequence[ListedConcept]) -> dict[int, dict[str, Any]]:
  """Every concept's training record (its genre, its positives); refuses latent or pairs generation before
  every concept has one, in one sentence naming the first that lacks one."""
  records = run_state.read_records(folder, "train", len(concepts))
  for cid, concept in enumerate(concepts):
    if cid not in records:
      raise AxjaxError(f"concept {cid} ({concept.description!r}) has no training data in {folder} yet: run "
                       "--mode=train first (it gives each concept its genre and positives)")
  return records


def generate_latent(job: Job) -> None:
  """Latent-eval data for every concept with training data and without a latent record (the genre comes from
  training): latent_eval_data.parquet."""
  training = require_training(job.folder, job.concepts)

  def make(cid: int, concept: ListedConcept) -> dict[str, Any]:
    trained = training[cid]
    if "skipped" in trained:
      return {"skipped": f"skipped in training: {trained['skipped']}"}
    return _concept_latent(job, cid, concept, trained["genres"][0])

  def write(records: dict[int, dict[str, Any]]) -> None:
    if parts := [LatentPart(cid, c.description, c.ref, **r) for cid, c, r in _kept(job, records)]:
      write_latent(job.folder, parts)

  _each_concept(job, "latent", make, write, lambda record: (
      f"{len(record['eval_positives'])} positives, {len(record['eval_negatives'])} negatives, "
      f"{len(record['hard_negatives'])} hard negatives"))


PAIR_COLUMNS = ("input", "winning_output", "losing_output", "output_concept", "concept_genre", "category",
                "dataset_category", "concept_id")


def generate_pairs(job: Job) -> None:
  """generate/dpo_train_data.parquet: each training positive's response (winning) against the target model's own
  greedy answer (losing) to its instruction; the shared pool's rows win and lose with the same answer, as
  AxBench's. The answers come from, and stay in, the response cache the preference methods read."""
  parts = _train_parts(job, require_training(job.folder, job.concepts))
  if not parts:
    raise AxjaxError(f"{job.folder} has no training data to pair: every concept was skipped in training")
  instructions = [i for p in parts for i, _, _ in p.positives]
  answers = dict(zip(instructions, own_responses(
      job.model, instructions, max_new_tokens=job.config.pair_tokens, progress=None if job.progress is None else
      lambda done, total: job.progress("pairs (own answers)", done, total))))
  rows = [(i, o, answers[i], p.concept, g, "positive", p.concept_id) for p in parts for i, o, g in p.positives]
  pool = [(i, o, o, EMPTY_CONCEPT, g, "negative", -1) for i, o, g in _pool(job)]
  frame = pd.DataFrame(pool + rows, columns=[c for c in PAIR_COLUMNS if c != "dataset_category"])
  frame.insert(6, "dataset_category", "instruction")
  atomic_files.write_parquet(os.path.join(job.folder, "generate", "dpo_train_data.parquet"),
                             frame.astype({"concept_id": "int64"}))
  job.log(f"pairs: {len(rows)} preference pairs over {len(parts)} concepts")


def _count(record: dict[str, Any] | None, keys: Sequence[str]) -> dict[str, Any] | None:
  if record is None or "skipped" in record:
    return record
  return {k: len(record[k]) for k in keys}


def write_summary(job: Job) -> str:
  """generate/summary.json (each concept's counts per mode, every skipped concept with its reason) and the same as
  a text table."""
  concepts, skipped = [], []
  for cid, concept in enumerate(job.concepts):
    entry = {"concept_id": cid, "concept": concept.description,
             "train": _count(run_state.read_record(job.folder, "train", cid), ["positives"]),
             "latent": _count(run_state.read_record(job.folder, "latent", cid),
                              ["eval_positives", "eval_negatives", "hard_negatives"])}
    concepts.append(entry)
    skipped += [{"concept_id": cid, "concept": concept.description, "mode": mode, "reason": entry[mode]["skipped"]}
                for mode in ("train", "latent") if entry[mode] and "skipped" in entry[mode]]
  atomic_files.write_json(os.path.join(job.folder, "generate", "summary.json"),
                          {"concepts": concepts, "skipped": skipped})
  cell = lambda counts: "-" if counts is None else ("skipped" if "skipped" in counts else
                                                    " / ".join(str(v) for v in counts.values()))
  lines = ["| id | concept | train positives | eval positives / negatives / hard negatives |", "|---|---|---|---|"]
  lines += [f"| {e['concept_id']} | {e['concept'][:50]} | {cell(e['train'])} | {cell(e['latent'])} |"
            for e in concepts]
  lines += [f"skipped: concept {s['concept_id']} ({s['mode']}): {s['reason']}" for s in skipped]
  return "\n".join(lines)
