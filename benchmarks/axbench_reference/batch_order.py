"""axjax's ReFT-r1 trained on the original AxBench's exact batch order, beside AxBench's own training log.

AxBench's LsReFT draws each concept's batches from `DataLoader(shuffle=True, batch_size=6,
generator=torch.Generator().manual_seed(42))` over the concept's examples (positives, then the genre's
negatives, in file order: the same order as axjax's per-concept example axis). This script rebuilds that order
with torch's own DataLoader, makes axjax train on it (it replaces `batching.minibatches` for this run only),
runs detection, and prints axjax's per-step LM loss and L1 term beside the ones AxBench printed. With the same
batches and the same initial w (0.01 everywhere) the two trainings should agree, so a concept whose AUROC
differed between the codes under their own orders is explained by the order if it agrees here.

  python benchmarks/axbench_reference/batch_order.py --axbench_log=/work/axbench_ref/out_lsreft_l20.log \
      --output_dir=/work/runs/reft-axbench-order   # needs torch (only for the order); ~30 min on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pandas as pd
import torch
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import axjax  # noqa: E402
from axjax.data import batching  # noqa: E402
from axjax.data.axbench_format import read_axbench  # noqa: E402
from axjax.methods.detection_run import run_detection  # noqa: E402
from axjax.methods.fit import ActivationCache  # noqa: E402

_DATA = flags.DEFINE_string("data", "concept10/prod_2b_l20_v1", "AxBench data folder.")
_LAYER = flags.DEFINE_integer("layer", 12, "Layer.")
_CONCEPTS = flags.DEFINE_integer("max_concepts", 2, "The first N concepts (AxBench's run trained these).")
_LOG = flags.DEFINE_string("axbench_log", None, "AxBench's train log (tqdm lines 'loss .. || l1 loss ..').")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Where the detection run writes.", required=True)
_SEED = 42  # AxBench's default seed, the generator of every concept's DataLoader


def axbench_order(n: int, batch_size: int, epochs: int) -> list[list[int]]:
  """Every step's example positions, as AxBench's DataLoader yields them for a concept with n examples."""
  loader = torch.utils.data.DataLoader(list(range(n)), batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(_SEED))
  return [batch.tolist() for _ in range(epochs) for batch in loader]


def axbench_minibatches(row_valid, batch_size, epochs, seed, concept_ids=None):
  """Drop-in for `batching.minibatches` that yields AxBench's order (each concept reseeded to 42)."""
  del seed, concept_ids
  counts = np.asarray(row_valid, bool).sum(axis=1)
  orders = [axbench_order(int(n), batch_size, epochs) for n in counts]
  per_epoch = batching.steps_per_epoch(row_valid, batch_size)
  for step in range(epochs * per_epoch):
    positions = np.zeros((len(counts), batch_size), np.int32)
    weight = np.zeros(positions.shape, bool)
    for c, order in enumerate(orders):
      if step < len(order):  # a concept with fewer steps gets all-False ones, as batching.minibatches does
        positions[c, :len(order[step])], weight[c, :len(order[step])] = order[step], True
    yield batching.Minibatch(step // per_epoch, step, positions, weight)


def axbench_trace(path: str) -> list[tuple[float, float]]:
  """(loss, l1) per optimizer step from AxBench's tqdm log, in order (concepts one after another)."""
  text = open(path, encoding="utf-8", errors="replace").read().replace("\r", "\n")
  out, seen = [], set()
  for m in re.finditer(r"lr ([\d.]+) \|\| loss ([\d.]+) \|\| l1 loss ([\d.]+)", text):
    if m.groups() not in seen:  # tqdm prints each step's description twice
      seen.add(m.groups())
      out.append((float(m.group(2)), float(m.group(3))))
  return out


def main(argv):
  del argv
  batching.minibatches = axbench_minibatches
  data = read_axbench(_DATA.value, max_concepts=_CONCEPTS.value)
  cache = ActivationCache(axjax.load("gemma-3-270m", "float32"), data, _LAYER.value)
  reports, _ = run_detection(cache, ["ReFT-r1"], _OUTPUT.value, overrides={}, seed=0, imbalance_factor=None)
  record = pd.read_parquet(os.path.join(_OUTPUT.value, "training", "ReFT-r1.parquet"))
  reference = axbench_trace(_LOG.value) if _LOG.value else []
  rows = []
  for i, entry in enumerate(reports["ReFT-r1"]["concepts"]):
    mine = record[record["concept_id"] == entry["concept_id"]].sort_values("step")
    theirs = reference[i * len(mine):(i + 1) * len(mine)]
    for j, (_, r) in enumerate(mine.iterrows()):
      ref = theirs[j] if j < len(theirs) else (float("nan"), float("nan"))
      rows.append(dict(concept=entry["concept_id"], step=int(r["step"]) + 1, axjax_loss=float(r["loss"]),
                       axjax_l1=float(r["l1"]), axjax_fired=float(r["fired"]), axbench_loss=ref[0],
                       axbench_l1=ref[1]))
    print(f"concept {entry['concept_id']}: AUROC {entry['roc']['roc_auc']:.3f}")
  table = pd.DataFrame(rows)
  table.to_csv(os.path.join(_OUTPUT.value, "trace_vs_axbench.csv"), index=False)
  print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
  print(json.dumps({str(e["concept_id"]): e["roc"]["roc_auc"] for e in reports["ReFT-r1"]["concepts"]}))


if __name__ == "__main__":
  app.run(main)
