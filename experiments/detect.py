"""Trains concept dictionaries with several methods and evaluates concept detection, as AxBench does.

  python -m experiments.detect                      # embedded Gemma 3 270M, Concept10 (2B L20 data), layer 12
  python -m experiments.detect --data=conceptFD/prod_2b_l10_v1 --layer=6 --methods=DiffMean,LinearProbe

Writes into --output_dir: dictionaries/<method>/ (Orbax), detection/<method>.json, detection.json (all
methods), summary.md (AUROC and hard-negative accuracy per concept and method, output-centric descriptions),
descriptions.json (each direction's promoted tokens and steering effect), run.json (the settings), and for
gradient-trained methods
training/<method>.parquet (per concept and step: loss and its parts), training/<method>.json (final loss, dead
latents) and training_loss.png. Rerunning the same command
skips methods already finished; a different model, data, layer or seed in the same folder is refused.
"""

from __future__ import annotations

import os
from absl import flags

import axjax
from axjax import atomic_files
from axjax.data.axbench_format import read_axbench
from axjax.errors import AxjaxError
from axjax.evaluation import descriptions
from axjax.methods import registry
from axjax.methods.detection_run import check_run, run_detection, summary_table, training_records
from axjax.steering_eval.report import TRAINING_PLOT, training_loss_plot
from axjax.methods.fit import DEAD_LATENT_REMEDIES, ActivationCache, sweep_points
from experiments import cli, sae_flags, scale_flags

_MODEL = flags.DEFINE_string("model", axjax.EMBEDDED_MODEL, "HF checkpoint folder, .gguf file or 'gemma-3-270m'.")
_DATA = flags.DEFINE_string("data", "concept10/prod_2b_l20_v1",
                            "A shipped AxBench dataset name (see axjax.data.builtin_datasets()) or a folder path.")
_LAYER = flags.DEFINE_integer("layer", 12, "Decoder layer whose output (residual stream) the methods read.")
_METHODS = flags.DEFINE_list("methods", ["DiffMean", "PCA", "LAT", "LinearProbe"],
                             f"Methods to train and evaluate, from: {', '.join(registry.METHODS)}.")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Results folder (default checkpoints/detect-<data>-l<layer>).")
_MAX_CONCEPTS = flags.DEFINE_integer("max_concepts", None, "Use only the first N concepts.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None,
                                     "Train on at most N examples per concept, half positives and half negatives "
                                     "(AxBench's max_num_of_examples, its scaling-law sweep).")
_HPARAMS = flags.DEFINE_list("hparams", [], "Overrides as Method.name=value, e.g. ReFT-r1.n_epochs=1.")
_SWEEP = flags.DEFINE_multi_string(
    "sweep", [], "A hyperparameter grid trained inside one compiled step, e.g. --sweep=ReFT-r1.lr=0.005,0.01,0.02 "
    "(repeat the flag for more parameters of a method: every combination trains). Sweepable: lr and the L1 "
    "coefficients. Each point is reported as 'Method@lr=...'; the method's own entry takes, per concept, the "
    "point with the lowest training loss.")
_IMBALANCE = flags.DEFINE_integer("imbalance_factor", 100,
                                  "Negatives per positive in the imbalanced F1 setting (capped by the data).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for data order, initialisation and LAT's pairing.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model dtype.")
_DEAD_REMEDY = flags.DEFINE_enum(
    "dead_latent_remedy", "none", list(DEAD_LATENT_REMEDIES),
    "ReFT-r1/SSV concepts whose ReLU latent never fired in the last training epoch: 'none' keeps them (AxBench); "
    "'diffmean' retrains them from their DiffMean direction.")


def main(argv):
  del argv
  chunking, mesh = scale_flags.chunking(), scale_flags.mesh()
  methods = [registry.method(m).name for m in _METHODS.value]
  if steer_only := [m for m in methods if not registry.method(m).detects]:
    raise AxjaxError(f"{steer_only[0]} does not detect concepts (AxBench has no detection for it): run it with "
                     "experiments.steer")
  overrides = registry.parse_overrides(_HPARAMS.value, methods)
  sae_flags.check(methods)
  sweeps = registry.parse_sweeps(_SWEEP.value, methods)
  data = read_axbench(_DATA.value, max_concepts=_MAX_CONCEPTS.value)  # validated before any model work
  output = _OUTPUT.value or os.path.join("checkpoints", f"detect-{_DATA.value.replace('/', '-')}-l{_LAYER.value}")
  model = axjax.load(_MODEL.value, _DTYPE.value)
  model.config.check_layer(_LAYER.value)
  sae, sae_features = sae_flags.load(model, data.concepts, _LAYER.value, methods)
  for name in methods:
    hp = registry.hyperparameters(registry.method(name), model.config, overrides.get(name))
    if name in sweeps:
      sweep_points(registry.method(name), hp, sweeps[name])
  check_run(output, {"model": model.name, "data": _DATA.value, "layer": _LAYER.value, "seed": _SEED.value,
                     "dtype": _DTYPE.value, "max_concepts": _MAX_CONCEPTS.value, "max_examples": _MAX_EXAMPLES.value,
                     "concept_ids": [c.concept_id for c in data.concepts], "sae": sae and sae.source,
                     "sae_features": sae_features and {str(c): f for c, f in sae_features.items()}})
  cache = ActivationCache(model, data, _LAYER.value, cli.progress_bars(), max_examples=_MAX_EXAMPLES.value,
                          mesh=mesh, sae=sae, sae_features=sae_features)
  reports, dictionaries = run_detection(cache, methods, output, overrides=overrides, seed=_SEED.value,
                             dead_latent_remedy=_DEAD_REMEDY.value, sweeps=sweeps, **chunking,
                             imbalance_factor=_IMBALANCE.value, log=cli.say)
  atomic_files.write_json(os.path.join(output, "detection.json"), reports)
  if records := training_records(output, methods):
    atomic_files.write_bytes(os.path.join(output, TRAINING_PLOT), training_loss_plot(records))
  names = {c.concept_id: c.name for c in data.concepts}
  table = summary_table(reports, names)
  hard = summary_table(reports, names, metric="hard-negative macro accuracy")
  described = descriptions.describe_dictionaries(model, {m: dictionaries[m] for m in methods})
  descriptions.write_descriptions(output, described)
  tables = "\n".join(descriptions.markdown_table(d) for d in described)
  atomic_files.write_text(os.path.join(output, "summary.md"),
                          f"# Concept detection: {model.name}, {_DATA.value}, layer {_LAYER.value}\n\nROC AUC\n\n{table}"
                          f"\nHard-negative macro accuracy\n\n{hard}\n## Output-centric descriptions\n\n{tables}")
  cli.say(f"\nAUROC ({model.name}, {_DATA.value}, layer {_LAYER.value}); results in {output}\n\n{table}")


if __name__ == "__main__":
  cli.run(main)
