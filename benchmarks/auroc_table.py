"""Markdown tables of per-concept detection results from `experiments.detect` output folders (for BENCHMARKS.md).

  python benchmarks/auroc_table.py checkpoints/detect-concept10-prod_2b_l20_v1-l12 [more folders ...]

Every folder's detection/<method>.json becomes a column (labelled with its folder when there are several):
one table of ROC AUC and one of hard-negative macro accuracy, with the means.
"""

from __future__ import annotations

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from axjax.methods.detection_run import METRICS, summary_table  # noqa: E402


def main(folders: list[str]) -> None:
  if not folders:
    sys.exit(__doc__)
  missing = [f for f in folders if not os.path.isdir(os.path.join(f, "detection"))]
  if missing:
    sys.exit(f"error: no detection/ folder in {', '.join(missing)}")
  reports = {}
  for folder in folders:
    for path in sorted(glob.glob(os.path.join(folder, "detection", "*.json"))):
      method = os.path.splitext(os.path.basename(path))[0]
      with open(path) as f:
        reports[method if len(folders) == 1 else f"{method} ({os.path.basename(folder.rstrip('/'))})"] = json.load(f)
  for metric in METRICS:
    print(f"{metric}\n\n{summary_table(reports, metric=metric)}")


if __name__ == "__main__":
  main(sys.argv[1:])
