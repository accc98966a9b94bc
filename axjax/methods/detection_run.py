"""Trains each method's dictionary and evaluates its detection into a results folder, resumably.

Layout (shared by `experiments.detect` and `experiments.steer`): dictionaries/<method>/ (Orbax, with max
activations and thresholds), detection/<method>.json (AxBench's metrics), run.json (the settings).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Sequence

from axjax import atomic_files
from axjax.dictionary import Dictionary, load_dictionary, save_dictionary
from axjax.errors import AxjaxError
from axjax.methods.detection import evaluate_detection
from axjax.methods.fit import ActivationCache, fit_method


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


def run_detection(cache: ActivationCache, methods: Sequence[str], output_dir: str, *,
                  overrides: Mapping[str, Mapping[str, str]], seed: int, imbalance_factor: int | None,
                  log: Callable[[str], None] = print) -> tuple[dict[str, dict], dict[str, Dictionary]]:
  """Detection report and dictionary (with max activations) of every method; finished methods are read back."""
  reports, dictionaries = {}, {}
  hidden, layer = cache.model.config.hidden_size, cache.layer
  for name in methods:
    result_path = os.path.join(output_dir, "detection", f"{name}.json")
    dict_path = os.path.join(output_dir, "dictionaries", name)
    if os.path.exists(result_path) and os.path.exists(dict_path):
      reports[name] = atomic_files.read_json(result_path)
      dictionaries[name] = load_dictionary(dict_path, hidden_size=hidden, layer=layer)
      continue
    if os.path.exists(dict_path):
      dictionary = load_dictionary(dict_path, hidden_size=hidden, layer=layer)
    else:
      dictionary = fit_method(name, cache, overrides=overrides.get(name), seed=seed, progress=cache.progress)
    report, dictionary = evaluate_detection(dictionary, cache, imbalance_factor)
    save_dictionary(dict_path, dictionary, overwrite=os.path.exists(dict_path))
    atomic_files.write_json(result_path, report)
    reports[name], dictionaries[name] = report, dictionary
    log(f"{name}: mean AUROC {report['mean']['roc']['roc_auc']:.3f} over {len(report['concepts'])} concepts")
  return reports, dictionaries


def summary_table(reports: dict[str, dict], names: dict[int, str]) -> str:
  """Markdown: AUROC per concept (rows) and method (columns), then the means."""
  methods = list(reports)
  lines = ["| concept | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
  for i, entry in enumerate(next(iter(reports.values()))["concepts"]):
    cid = entry["concept_id"]
    cells = [f"{reports[m]['concepts'][i]['roc']['roc_auc']:.3f}" for m in methods]
    lines.append(f"| {cid}: {names[cid][:60]} | " + " | ".join(cells) + " |")
  lines.append("| **mean** | " + " | ".join(f"**{reports[m]['mean']['roc']['roc_auc']:.3f}**" for m in methods) + " |")
  return "\n".join(lines) + "\n"
