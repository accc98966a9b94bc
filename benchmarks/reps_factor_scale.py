"""How large a trained RePS vector's edit is against the residual stream it steers: per concept, the chosen
steering (and suppression) factor, ||v||, and the edit's norm (||factor v||; suppression ||(factor - b) v||)
over the median token norm of the stream after the layer on the steered prompts (BOS left out), from a
finished `experiments.steer` folder.

  python benchmarks/reps_factor_scale.py checkpoints/reps-quick-l12 [--method SV-RePS]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import axjax  # noqa: E402
from axjax.generation.text import encode_prompts, left_pad  # noqa: E402
from axjax.methods.activations import layer_activations  # noqa: E402


def median_token_norm(model, prompts: list[str], layer: int) -> float:
  """Median L2 norm of the stream after `layer` over the prompts' chat-templated tokens, BOS excluded."""
  ids = encode_prompts(model.tokenizer, prompts, True)
  tokens, mask = left_pad(ids, 0, 8)
  mask = np.asarray(mask, bool)
  order = np.argsort(~mask, axis=1, kind="stable")  # right-pad: real tokens first, as layer_activations expects
  tokens, mask = np.take_along_axis(tokens, order, 1), np.take_along_axis(mask, order, 1)
  acts = layer_activations(model.params, model.config, tokens, mask, layer).astype(np.float32)
  norms = np.linalg.norm(acts, axis=-1)[:, 1:][mask[:, 1:]]
  return float(np.median(norms))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("folder")
  parser.add_argument("--method", default="SV-RePS")
  args = parser.parse_args()
  run = json.load(open(os.path.join(args.folder, "run.json")))
  model = axjax.load(run["model"] if os.path.exists(run["model"]) else axjax.EMBEDDED_MODEL)
  dictionary = axjax.load_dictionary(os.path.join(args.folder, "dictionaries", args.method))
  rows = pd.read_parquet(os.path.join(args.folder, "steering", "rows.parquet"))
  norm = median_token_norm(model, sorted(set(rows["instruction"])), run["layer"])
  print(f"median token norm after layer {run['layer']} on the steered prompts: {norm:.1f}\n")
  print("| evaluation | concept | factor | ||v|| | edit norm / median ||h|| |")
  print("|---|---|---|---|---|")
  for evaluation, sub in (("steer", ""), ("suppress", "suppression")):
    path = os.path.join(args.folder, sub, "results.json")
    if not os.path.exists(path):
      continue
    for entry in json.load(open(path))["selection"]:
      if entry["method"] != args.method:
        continue
      index = dictionary.index_of(entry["concept_id"])
      v = dictionary.weights[index]
      strength = entry["factor"] - dictionary.biases[index] if entry["factor"] < 0 else entry["factor"]
      size = abs(strength) * np.linalg.norm(v)  # suppression adds (factor - b) v (rows.row_strengths)
      print(f"| {evaluation} | {entry['concept_id']} | {entry['factor']:g} | {np.linalg.norm(v):.2f} | "
            f"{size / norm:.3f} |")


if __name__ == "__main__":
  main()
