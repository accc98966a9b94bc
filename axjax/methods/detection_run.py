"""Trains each method's dictionary and evaluates its detection into a results folder, resumably.

Layout (shared by `experiments.detect` and `experiments.steer`): dictionaries/<method>/ (Orbax, with max
activations and thresholds), detection/<method>.json (AxBench's metrics), training/<method>.parquet and .json
(gradient-trained methods: per-step losses, per-concept final loss and dead latents), run.json (the settings).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from axjax import atomic_files
from axjax.dictionary import Dictionary, load_dictionary, save_dictionary
from axjax.errors import AxjaxError
from axjax.methods.detection import evaluate_detection
from axjax.methods.fit import ActivationCache, FitResult, fit_method


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
    entry = {"concept_id": int(cid), "final_loss": float(rows["loss"].iloc[-1])}
    if result.dead is not None:
      entry.update(fired_last_epoch=float(rows["fired"].mean()), dead_latent=bool(result.dead[i]),
                   remedied=bool(result.remedied[i]))
    out.append(entry)
  return out


def run_detection(cache: ActivationCache, methods: Sequence[str], output_dir: str, *,
                  overrides: Mapping[str, Mapping[str, str]], seed: int, imbalance_factor: int | None,
                  dead_latent_remedy: str = "none",
                  log: Callable[[str], None] = print) -> tuple[dict[str, dict], dict[str, Dictionary]]:
  """Detection report and dictionary (with max activations) of every method; finished methods are read back.

  Gradient-trained methods also write training/<method>.parquet (per concept and step: loss and its parts)
  and keep their state per epoch under training/<method>/ until their dictionary is saved.
  """
  reports, dictionaries = {}, {}
  hidden, layer = cache.model.config.hidden_size, cache.layer
  for name in methods:
    result_path = os.path.join(output_dir, "detection", f"{name}.json")
    dict_path = os.path.join(output_dir, "dictionaries", name)
    if os.path.exists(result_path) and os.path.exists(dict_path):
      reports[name] = atomic_files.read_json(result_path)
      dictionaries[name] = load_dictionary(dict_path, hidden_size=hidden, layer=layer)
      continue
    training = None
    if os.path.exists(dict_path):
      dictionary = load_dictionary(dict_path, hidden_size=hidden, layer=layer)
      record_path = os.path.join(output_dir, "training", f"{name}.json")
      training = atomic_files.read_json(record_path) if os.path.exists(record_path) else None
    else:
      state_dir = os.path.join(output_dir, "training", name)
      result = fit_method(name, cache, overrides=overrides.get(name), seed=seed, progress=cache.progress,
                          checkpoint_dir=state_dir, dead_latent_remedy=dead_latent_remedy)
      dictionary = result.dictionary
      if result.record is not None:
        training = _training_report(result)
        atomic_files.write_parquet(os.path.join(output_dir, "training", f"{name}.parquet"), result.record)
        atomic_files.write_json(os.path.join(output_dir, "training", f"{name}.json"), training)
        log(training_summary(name, result))
    report, dictionary = evaluate_detection(dictionary, cache, imbalance_factor)
    if training is not None:
      report["training"] = training
      report["dead_latents"] = [t["concept_id"] for t in training if t.get("dead_latent")]
    save_dictionary(dict_path, dictionary, overwrite=os.path.exists(dict_path))
    atomic_files.write_json(result_path, report)
    shutil.rmtree(os.path.join(output_dir, "training", name), ignore_errors=True)  # epoch state, now finished
    reports[name], dictionaries[name] = report, dictionary
    log(f"{name}: mean AUROC {report['mean']['roc']['roc_auc']:.3f} over {len(report['concepts'])} concepts")
  return reports, dictionaries


def training_records(output_dir: str, methods: Sequence[str]) -> dict[str, pd.DataFrame]:
  """The training record (training/<method>.parquet) of each gradient-trained method among `methods`."""
  paths = {name: os.path.join(output_dir, "training", f"{name}.parquet") for name in methods}
  return {name: pd.read_parquet(path) for name, path in paths.items() if os.path.exists(path)}


def _hard_negative(entry: dict) -> float | None:
  return (entry["hard_negative"] or {}).get("macro_avg_accuracy")  # None: the concept has no hard negatives


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
