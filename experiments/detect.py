"""Trains concept dictionaries with several methods and evaluates concept detection, as AxBench does.

  python -m experiments.detect                      # embedded Gemma 3 270M, Concept10 (2B L20 data), layer 12
  python -m experiments.detect --data=conceptFD/prod_2b_l10_v1 --layer=6 --methods=DiffMean,LinearProbe

Writes into --output_dir: dictionaries/<method>/ (Orbax), detection/<method>.json, detection.json (all
methods), summary.md (AUROC per concept and method) and run.json (the settings). Rerunning the same command
skips methods already finished; a different model, data, layer or seed in the same folder is refused.
"""

from __future__ import annotations

import os
from absl import flags, logging
from tqdm.auto import tqdm

import axjax
from axjax import atomic_files
from axjax.data.axbench_format import read_axbench
from axjax.dictionary import load_dictionary, save_dictionary
from axjax.errors import AxjaxError
from axjax.methods import registry
from axjax.methods.detection import evaluate_detection
from axjax.methods.fit import ActivationCache, fit_method
from experiments import cli

_MODEL = flags.DEFINE_string("model", axjax.EMBEDDED_MODEL, "HF checkpoint folder, .gguf file or 'gemma-3-270m'.")
_DATA = flags.DEFINE_string("data", "concept10/prod_2b_l20_v1",
                            "A shipped AxBench dataset name (see axjax.data.builtin_datasets()) or a folder path.")
_LAYER = flags.DEFINE_integer("layer", 12, "Decoder layer whose output (residual stream) the methods read.")
_METHODS = flags.DEFINE_list("methods", ["DiffMean", "PCA", "LAT", "LinearProbe"],
                             f"Methods to train and evaluate, from: {', '.join(registry.METHODS)}.")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Results folder (default checkpoints/detect-<data>-l<layer>).")
_MAX_CONCEPTS = flags.DEFINE_integer("max_concepts", None, "Use only the first N concepts.")
_HPARAMS = flags.DEFINE_list("hparams", [], "Overrides as Method.name=value, e.g. ReFT-r1.n_epochs=1.")
_IMBALANCE = flags.DEFINE_integer("imbalance_factor", 100,
                                  "Negatives per positive in the imbalanced F1 setting (capped by the data).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for data order, initialisation and LAT's pairing.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model dtype.")


def parse_overrides(items: list[str], methods: list[str]) -> dict[str, dict[str, str]]:
  """{'ReFT-r1': {'n_epochs': '1'}} from ['ReFT-r1.n_epochs=1']."""
  out: dict[str, dict[str, str]] = {}
  for item in items:
    name, _, value = item.partition("=")
    meth, _, key = name.rpartition(".")
    if not value or not meth or not key:
      raise AxjaxError(f"--hparams entry {item!r} is not of the form Method.name=value")
    spec = registry.method(meth)
    if spec.name not in methods:
      raise AxjaxError(f"--hparams names {spec.name}, which is not among --methods")
    out.setdefault(spec.name, {})[key] = value
  return out


def check_run(output_dir: str, settings: dict) -> None:
  """Refuses to resume into a folder written with other settings; records them otherwise."""
  path = os.path.join(output_dir, "run.json")
  if os.path.exists(path):
    previous = atomic_files.read_json(path)
    differing = [k for k in settings if previous.get(k) != settings[k]]
    if differing:
      raise AxjaxError(f"{output_dir} holds a run with other settings ({', '.join(differing)}): "
                       "choose another --output_dir")
  atomic_files.write_json(path, settings)


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


def main(argv):
  del argv
  methods = [registry.method(m).name for m in _METHODS.value]
  overrides = parse_overrides(_HPARAMS.value, methods)
  data = read_axbench(_DATA.value, max_concepts=_MAX_CONCEPTS.value)  # validated before any model work
  output = _OUTPUT.value or os.path.join("checkpoints", f"detect-{_DATA.value.replace('/', '-')}-l{_LAYER.value}")
  model = axjax.load(_MODEL.value, _DTYPE.value)
  model.config.check_layer(_LAYER.value)
  for name in methods:
    registry.hyperparameters(registry.method(name), model.config, overrides.get(name))
  check_run(output, {"model": model.name, "data": _DATA.value, "layer": _LAYER.value, "seed": _SEED.value,
                     "dtype": _DTYPE.value, "max_concepts": _MAX_CONCEPTS.value,
                     "concept_ids": [c.concept_id for c in data.concepts]})
  bars: dict[str, tqdm] = {}

  def progress(stage: str, done: int, total: int) -> None:
    if stage not in bars:
      bars[stage] = tqdm(total=total, desc=stage)
    bars[stage].update(done - bars[stage].n)

  cache = ActivationCache(model, data, _LAYER.value, progress)
  reports = {}
  for name in methods:
    result_path = os.path.join(output, "detection", f"{name}.json")
    dict_path = os.path.join(output, "dictionaries", name)
    if os.path.exists(result_path) and os.path.exists(dict_path):
      logging.info("%s: already done in %s", name, result_path)
      reports[name] = atomic_files.read_json(result_path)
      continue
    if os.path.exists(dict_path):
      dictionary = load_dictionary(dict_path, hidden_size=model.config.hidden_size, layer=_LAYER.value)
    else:
      dictionary = fit_method(name, cache, overrides=overrides.get(name), seed=_SEED.value, progress=progress)
    report, dictionary = evaluate_detection(dictionary, cache, _IMBALANCE.value)
    save_dictionary(dict_path, dictionary, overwrite=os.path.exists(dict_path))
    atomic_files.write_json(result_path, report)
    reports[name] = report
    print(f"{name}: mean AUROC {report['mean']['roc']['roc_auc']:.3f} over {len(report['concepts'])} concepts",
          flush=True)
  atomic_files.write_json(os.path.join(output, "detection.json"), reports)
  table = summary_table(reports, {c.concept_id: c.name for c in data.concepts})
  atomic_files.write_text(os.path.join(output, "summary.md"),
                          f"# Concept detection: {model.name}, {_DATA.value}, layer {_LAYER.value}\n\n{table}")
  print(f"\nAUROC ({model.name}, {_DATA.value}, layer {_LAYER.value}); results in {output}\n\n{table}")


if __name__ == "__main__":
  cli.run(main)
