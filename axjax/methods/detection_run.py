"""Trains each method's dictionary and evaluates its detection into a results folder, resumably.

Layout (shared by `experiments.detect` and `experiments.steer`): dictionaries/<method>/ (Orbax, with max
activations and thresholds), detection/<method>.json (AxBench's metrics), training/<method>.parquet and .json
(gradient-trained methods: per-step losses, per-concept final loss and dead latents), run.json (the settings).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
import pandas as pd

from axjax import atomic_files, processes, sharding
from axjax.dictionary import Dictionary, load_dictionary, save_dictionary
from axjax.dictionary.store import concatenate, load_dictionary_npz, save_dictionary_npz
from axjax.errors import AxjaxError
from axjax.methods import concept_chunks
from axjax.methods.detection import evaluate_detection
from axjax.methods.fit import ActivationCache, FitResult, best_of_sweep, example_set, fit_method, fit_sweep
from axjax.methods.joint_training import host_memory_budget
from axjax.methods.registry import grid_label, method


def check_run(output_dir: str, settings: dict) -> None:
  """Refuses to resume into a folder written with other settings; records them otherwise."""
  settings = json.loads(json.dumps(settings))  # compared as stored: tuples become lists
  path = os.path.join(output_dir, "run.json")
  if os.path.exists(path):
    previous = atomic_files.read_json(path)
    differing = [k for k in settings if previous.get(k) != settings[k]]
    if differing:
      raise AxjaxError(f"{output_dir} holds a run with other settings ({', '.join(differing)}): "
                       "choose another --output_dir")
  atomic_files.write_json(path, settings)


def read_reusable(source_dir: str, methods: Sequence[str], *, hidden_size: int, layer: int,
                  model_name: str) -> dict[str, tuple[Dictionary, dict | None]]:
  """Each method's dictionary (and detection report, if any) from an earlier results folder, refusing one trained
  for another model, width or layer. Nothing is written, so bad input costs nothing."""
  found = {}
  for name in methods:
    source = os.path.join(source_dir, "dictionaries", name)
    if not os.path.exists(source):
      raise AxjaxError(f"{source_dir} has no {name} dictionary (expected {source})")
    report = os.path.join(source_dir, "detection", f"{name}.json")
    found[name] = (load_dictionary(source, hidden_size=hidden_size, layer=layer, model_name=model_name),
                   atomic_files.read_json(report) if os.path.exists(report) else None)
  return found


def seed_results(output_dir: str, reusable: Mapping[str, tuple[Dictionary, dict | None]]) -> None:
  """Writes read_reusable's dictionaries and reports into this results folder, so run_detection reuses them."""
  for name, (dictionary, report) in reusable.items():
    target = os.path.join(output_dir, "dictionaries", name)
    if not os.path.exists(target):
      save_dictionary(target, dictionary)
    if report is not None:
      atomic_files.write_json(os.path.join(output_dir, "detection", f"{name}.json"), report)


def training_summary(name: str, result: FitResult) -> str:
  """One line on how a gradient-trained method's training went: final losses and dead latents."""
  final = result.record.groupby("concept_id")["loss"].last()
  line = f"{name}: final training loss {final.min():.4g} to {final.max():.4g} over {len(final)} concepts"
  if result.dead is not None:
    ids = result.dictionary.concept_ids
    dead = [ids[i] for i in np.flatnonzero(result.dead)]
    line += f"; dead latents: {len(dead)}" + (f" (concepts {', '.join(map(str, dead))})" if dead else "")
    if result.remedied.any():
      line += f"; {int(result.remedied.sum())} retrained from DiffMean"
  return line


def _training_report(result: FitResult) -> list[dict]:
  """Per concept: final loss and, for ReLU-scored methods, the last epoch's firing rate and dead/remedied flags."""
  record = result.record
  last = record[record["epoch"] == record.groupby("concept_id")["epoch"].transform("max")]
  out = []
  for i, cid in enumerate(result.dictionary.concept_ids):
    rows = last[last["concept_id"] == cid]
    entry = {"concept_id": int(cid), "final_loss": float(rows["loss"].iloc[-1]),
             **({"grid_point": rows["grid_point"].iloc[-1]} if "grid_point" in rows else {})}
    if result.dead is not None:
      entry.update(fired_last_epoch=float(rows["fired"].mean()), dead_latent=bool(result.dead[i]),
                   remedied=bool(result.remedied[i]))
    out.append(entry)
  return out


def _part_dictionary(part_dir: str, name: str, scratch: bool) -> str:
  """Where a results folder keeps method `name`'s dictionary: an Orbax folder, or for a chunk's results (which a
  process may write on its own) a scratch .npz."""
  return os.path.join(part_dir, "dictionaries", name + (".npz" if scratch else ""))


def _write_training(part_dir: str, name: str, result: FitResult, log: Callable[[str], None] | None,
                    scratch: bool) -> None:
  if result.record is not None:
    atomic_files.write_parquet(os.path.join(part_dir, "training", f"{name}.parquet"), result.record)
    atomic_files.write_json(os.path.join(part_dir, "training", f"{name}.json"), _training_report(result))
    if log is not None:
      log(training_summary(name, result))
  path = _part_dictionary(part_dir, name, scratch)
  (save_dictionary_npz if scratch else save_dictionary)(path, result.dictionary)


def _train_part(part_dir: str, name: str, cache: ActivationCache, *, overrides, seed: int, dead_latent_remedy: str,
                grid: Sequence[dict] | None, log: Callable[[str], None], scratch: bool, epoch_state: bool) -> None:
  """Trains method `name` on the concepts of `cache` into results folder `part_dir`: its dictionary (without
  max activations yet; `_part_dictionary`) and, for gradient-trained methods, training/<name>.parquet and .json.
  With a `grid`, every point trains in one step and is saved under its label; `name` gets each concept's best
  point. With `epoch_state`, training saves its state after every epoch (Orbax) and resumes from it."""
  state_dir = os.path.join(part_dir, "training", name) if epoch_state else None
  if grid:
    results = fit_sweep(name, cache, grid, overrides=overrides.get(name), seed=seed, progress=cache.progress,
                        checkpoint_dir=state_dir)
    labels = [grid_label(name, point) for point in grid]
    for label, result in zip(labels, results):
      _write_training(part_dir, label, result, None, scratch)
    _write_training(part_dir, name, best_of_sweep(results, labels), log, scratch)
  else:
    _write_training(part_dir, name, fit_method(name, cache, overrides=overrides.get(name), seed=seed,
                                               progress=cache.progress, checkpoint_dir=state_dir,
                                               dead_latent_remedy=dead_latent_remedy), log, scratch)
  if state_dir is not None:
    processes.on_writer(shutil.rmtree, state_dir, ignore_errors=True)  # epoch state, now finished


def _chunk_plan(output_dir: str, concept_ids: list[int], plan: Callable[[], list[tuple[int, ...]]]
                ) -> list[tuple[int, ...]]:
  """The concept chunks of this run: those an interrupted run of the same concepts recorded (the free memory,
  hence the default budget, may differ now), else `plan()`, recorded when it has several chunks."""
  path = os.path.join(output_dir, "chunks", "plan.json")
  if os.path.exists(path):
    stored = [tuple(c) for c in atomic_files.read_json(path)]
    if [c for chunk in stored for c in chunk] == concept_ids:
      return stored
  chunks = plan()
  if len(chunks) > 1:
    atomic_files.write_json(path, [list(c) for c in chunks])
  return chunks


def _merge_parts(output_dir: str, parts: list[str], name: str) -> None:
  """One dictionary and training record of method `name` from the chunk folders, in chunk order."""
  found = [load_dictionary_npz(_part_dictionary(p, name, scratch=True)) for p in parts]
  merged = concatenate(found)
  if "sweep_selected" in merged.hyperparameters:  # per concept: each chunk names its own concepts' points
    merged = merged.replace(hyperparameters={**merged.hyperparameters, "sweep_selected": sum(
        (d.hyperparameters["sweep_selected"] for d in found), [])})
  save_dictionary(os.path.join(output_dir, "dictionaries", name), merged)
  records = [os.path.join(p, "training", f"{name}.parquet") for p in parts]
  if all(os.path.exists(r) for r in records):
    atomic_files.write_parquet(os.path.join(output_dir, "training", f"{name}.parquet"),
                               pd.concat([pd.read_parquet(r) for r in records], ignore_index=True))
    atomic_files.write_json(os.path.join(output_dir, "training", f"{name}.json"),
                            sum((atomic_files.read_json(os.path.join(p, "training", f"{name}.json")) for p in parts), []))


def run_detection(cache: ActivationCache, methods: Sequence[str], output_dir: str, *,
                  overrides: Mapping[str, Mapping[str, str]], seed: int, imbalance_factor: int | None,
                  dead_latent_remedy: str = "none", memory_budget: int | None = None, max_chunk: int | None = None,
                  sweeps: Mapping[str, Sequence[dict]] | None = None,
                  log: Callable[[str], None] = print) -> tuple[dict[str, dict], dict[str, Dictionary]]:
  """Detection report of every detecting method and dictionary (with max activations where it detects) of every
  method; finished work is read back.

  The concepts train in chunks whose activations fit `memory_budget` bytes (default: half the free host
  memory) and hold at most `max_chunk` concepts: for each chunk, every method trains on activations computed
  once, and the chunk's results are kept under chunks/<i>/ until every chunk is done (a run of one chunk
  writes in place). A rerun resumes at the first unfinished chunk, method and epoch. Several processes whose
  devices each hold whole model-axis groups share the chunks out: each trains its own on its own devices and
  computes activations for their concepts only (they resume per chunk and method: epoch state needs Orbax
  saves by every process). Then one pass over the eval texts, on every device, scores every method's dictionary. Gradient-trained methods also write training/<method>.parquet
  (per concept and step: loss and its parts). A method in `sweeps` trains every point of its grid at once;
  each point is reported as its own entry ('ReFT-r1@lr=0.005'), and the method's entry takes each concept's
  point with the lowest training loss (`best_of_sweep`).
  """
  reports, dictionaries = {}, {}
  sweeps = sweeps or {}
  hidden, layer = cache.model.config.hidden_size, cache.layer
  dict_path = lambda folder, name: os.path.join(folder, "dictionaries", name)
  entries = {m: [m] + [grid_label(m, point) for point in sweeps.get(m, ())] for m in methods}
  pending = []
  for m in methods:
    for name in entries[m]:
      result_path = os.path.join(output_dir, "detection", f"{name}.json")
      trained = os.path.exists(dict_path(output_dir, name))
      if trained and (os.path.exists(result_path) or not method(m).detects):
        reports.update({name: atomic_files.read_json(result_path)} if method(m).detects else {})
        dictionaries[name] = load_dictionary(dict_path(output_dir, name), hidden_size=hidden, layer=layer)
      else:
        pending.append(name)
  untrained = [name for name in pending if not os.path.exists(dict_path(output_dir, name))]
  to_train = [m for m in methods if any(n in untrained for n in entries[m])]
  if untrained:
    ids = list(cache.concept_ids or [c.concept_id for c in cache.data.concepts])
    budget = memory_budget or host_memory_budget()  # the activations of one chunk
    # Several processes whose devices each hold whole model-axis groups share out the chunks: each trains its
    # own on its own devices and computes activations for its own concepts only.
    local = sharding.local_mesh(cache.mesh) if processes.multi() else None
    shares = 1 if local is None else jax.process_count()
    chunks = _chunk_plan(output_dir, ids, lambda: concept_chunks.at_least(concept_chunks.plan_chunks(
        ids, concept_chunks.activation_bytes(cache, to_train, ids), budget, max_chunk), shares))
    in_place = len(chunks) == 1 and shares == 1  # else chunks/<i>/, merged at the end
    parts = [output_dir] if in_place else [os.path.join(output_dir, "chunks", f"{i:05d}")
                                           for i in range(len(chunks))]
    if len(chunks) > 1:
      log(f"{len(ids)} concepts in {len(chunks)} chunks of up to {max(map(len, chunks))} concepts"
          + (f", shared by {shares} processes" if shares > 1 else ""))
    for i, (chunk, part) in enumerate(zip(chunks, parts)):
      done = lambda n: os.path.exists(_part_dictionary(part, n, scratch=not in_place))
      todo = [m for m in to_train if not all(done(n) for n in entries[m])]
      if not todo or (shares > 1 and i % shares != jax.process_index()):
        continue
      with processes.on_its_own() if shares > 1 else contextlib.nullcontext():
        part_cache = cache if in_place else ActivationCache(
            cache.model, cache.data, layer, cache.progress, concept_ids=chunk, max_examples=cache.max_examples,
            mesh=local or cache.mesh, sae=cache.sae, writer=cache.writer)
        if "binarized" in {example_set(n) for n in todo}:
          part_cache.examples("binarized")  # DiffMean/PCA then take their moments from these: one pass, not two
        for name in todo:
          _train_part(part, name, part_cache, overrides=overrides, seed=seed,
                      dead_latent_remedy=dead_latent_remedy, grid=sweeps.get(name), log=log,
                      scratch=not in_place, epoch_state=shares == 1)
        del part_cache  # the chunk's activations
      if len(chunks) > 1:
        log(f"chunk {i + 1}/{len(chunks)} trained ({len(chunk)} concepts)")
    processes.barrier()  # every process's chunks are written
    if not in_place:
      for name in untrained:
        _merge_parts(output_dir, parts, name)
      processes.on_writer(shutil.rmtree, os.path.join(output_dir, "chunks"))
  if pending:
    trained = {name: load_dictionary(dict_path(output_dir, name), hidden_size=hidden, layer=layer)
               for name in pending}
    dictionaries.update({n: d for n, d in trained.items() if not method(d.method).detects})
    scratch = os.path.join(output_dir, "scoring")

    def write(name: str, report: dict, dictionary: Dictionary) -> None:  # as soon as each report is made
      record_path = os.path.join(output_dir, "training", f"{name}.json")
      if os.path.exists(record_path):
        report["training"] = atomic_files.read_json(record_path)
        report["dead_latents"] = [t["concept_id"] for t in report["training"] if t.get("dead_latent")]
      save_dictionary(dict_path(output_dir, name), dictionary, overwrite=True)
      atomic_files.write_json(os.path.join(output_dir, "detection", f"{name}.json"), report)
      reports[name], dictionaries[name] = report, dictionary
      processes.on_writer(_remove_if_present, os.path.join(scratch, f"{name}.npz"))  # its scores so far
      log(f"{name}: mean AUROC {report['mean']['roc']['roc_auc']:.3f} over {len(report['concepts'])} concepts")

    evaluate_detection({n: d for n, d in trained.items() if method(d.method).detects}, cache.model, cache.data,
                       layer, imbalance_factor, cache.progress, cache.mesh, cache.placed_params, seed, scratch,
                       on_report=write)
  names = [n for m in methods for n in entries[m]]
  return {n: reports[n] for n in names if n in reports}, {n: dictionaries[n] for n in names}


def _remove_if_present(path: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)


def training_records(output_dir: str, methods: Sequence[str]) -> dict[str, pd.DataFrame]:
  """The training record (training/<method>.parquet) of each gradient-trained method among `methods`."""
  paths = {name: os.path.join(output_dir, "training", f"{name}.parquet") for name in methods}
  return {name: pd.read_parquet(path) for name, path in paths.items() if os.path.exists(path)}


def _hard_negative(entry: dict) -> float | None:
  return (entry.get("hard_negative") or {}).get("macro_avg_accuracy")  # None: the concept has no hard negatives


# Per-concept value and mean of each metric a summary table can show.
METRICS = {
    "ROC AUC": (lambda entry: entry["roc"]["roc_auc"], lambda report: report["mean"]["roc"]["roc_auc"]),
    "hard-negative macro accuracy": (_hard_negative, lambda report: _hard_negative(report["mean"])),
}


def summary_table(reports: dict[str, dict], names: dict[int, str] | None = None, metric: str = "ROC AUC") -> str:
  """Markdown: `metric` per concept (rows) and column (a method's report), then the means; "(dead)" marks a
  dead latent, "-" a concept without a value."""
  value, mean = METRICS[metric]
  cell = lambda x: "-" if x is None else f"{x:.3f}"
  labels = list(reports)
  lines = ["| concept | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
  for i, entry in enumerate(next(iter(reports.values()))["concepts"]):
    cid = entry["concept_id"]
    cells = [cell(value(reports[m]["concepts"][i])) + (" (dead)" if cid in reports[m].get("dead_latents", ()) else "")
             for m in labels]
    lines.append(f"| {cid}{': ' + names[cid][:60] if names else ''} | " + " | ".join(cells) + " |")
  lines.append("| **mean** | " + " | ".join(f"**{cell(mean(reports[m]))}**" for m in labels) + " |")
  return "\n".join(lines) + "\n"
