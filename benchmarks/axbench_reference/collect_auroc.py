"""Per-concept AUROCs from an AxBench latent evaluation, as JSON (optionally beside axjax's).

  python collect_auroc.py OUT_DIR                         # reads OUT_DIR/evaluate/latent.jsonl
  python collect_auroc.py OUT_DIR --axjax checkpoints/detect-concept10-prod_2b_l20_v1-l12

Prints {"auroc": {method: {concept_id: auroc}}, "mean_auroc": {method: mean},
"hard_negative": {method: {concept_id: macro_avg_accuracy}}, "mean_hard_negative": {method: mean}}.
With --axjax (a detect.py output folder, its detection.json or one detection/<method>.json) it adds
"axjax_auroc", "axjax_mean_auroc" and "max_abs_diff" for the methods and concepts both sides have, keyed by
AxBench's method names (AxBench's LsReFT is axjax's ReFT-r1; see AXJAX_NAMES).
"""

import argparse
import json
import os

import numpy as np

# AxBench method name -> axjax method name, where they differ (axjax/methods/registry.py ALIASES).
AXJAX_NAMES = {"LsReFT": "ReFT-r1"}


def read_axbench(out_dir: str) -> list[dict]:
  """latent.jsonl rows, the last one per concept (evaluate.py appends on resume), in concept order."""
  rows = {}
  with open(os.path.join(out_dir, "evaluate", "latent.jsonl")) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        rows[int(row["concept_id"])] = row
  return [rows[c] for c in sorted(rows)]


def per_concept(rows: list[dict], evaluator: str, key: str) -> dict[str, dict[str, float | None]]:
  """{method: {concept_id: metric}} for one evaluator's metric (None where AxBench returned nothing)."""
  out: dict[str, dict[str, float | None]] = {}
  for row in rows:
    for method, metrics in row["results"].get(evaluator, {}).items():
      out.setdefault(method, {})[str(row["concept_id"])] = metrics.get(key)
  return out


def means(table: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
  """Mean over concepts per method, skipping missing values."""
  out = {}
  for method, values in table.items():
    vals = [v for v in values.values() if v is not None]
    out[method] = float(np.mean(vals)) if vals else None
  return out


def read_axjax(path: str) -> dict[str, dict[str, float]]:
  """{method: {concept_id: auroc}} from axjax's detect.py output (folder, detection.json or <method>.json)."""
  if os.path.isdir(path):
    path = os.path.join(path, "detection.json") if os.path.exists(os.path.join(path, "detection.json")) \
      else path
  if os.path.isdir(path):  # a folder without detection.json: read detection/<method>.json files
    folder = os.path.join(path, "detection")
    reports = {f[:-5]: json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
               if f.endswith(".json")}
  else:
    data = json.load(open(path))
    reports = {os.path.basename(path)[:-5]: data} if "concepts" in data else data
  return {m: {str(c["concept_id"]): c["roc"]["roc_auc"] for c in r["concepts"]} for m, r in reports.items()}


def main() -> None:
  """Prints the JSON summary."""
  p = argparse.ArgumentParser()
  p.add_argument("out_dir", help="AxBench --dump_dir of the run")
  p.add_argument("--axjax", help="axjax detect.py output folder or detection JSON to compare with")
  a = p.parse_args()
  rows = read_axbench(a.out_dir)
  auroc = per_concept(rows, "AUCROCEvaluator", "roc_auc")
  hard = per_concept(rows, "HardNegativeEvaluator", "macro_avg_accuracy")
  result = {"auroc": auroc, "mean_auroc": means(auroc), "hard_negative": hard, "mean_hard_negative": means(hard)}
  if a.axjax:
    ours = read_axjax(a.axjax)
    ours = {m: ours[AXJAX_NAMES.get(m, m)] for m in auroc if AXJAX_NAMES.get(m, m) in ours}
    common = {m: {c: ours[m][c] for c in auroc[m] if c in ours[m]} for m in auroc if m in ours}
    result["axjax_auroc"] = common
    result["axjax_mean_auroc"] = means(common)
    result["max_abs_diff"] = {m: max((abs(auroc[m][c] - v) for c, v in common[m].items()), default=None)
                              for m in common}
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
