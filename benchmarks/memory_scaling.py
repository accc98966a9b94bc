"""Peak host memory and wall time of `experiments.detect` as the concept count grows (issue 9).

  python benchmarks/memory_scaling.py --concepts=10,100,500 --memory_budget_gb=0.25

Builds synthetic AxBench folders from Concept10 (`axjax.benchmarks.synthetic_concepts`: concepts replicated
under new ids, a few rows each), runs the detection CLI on each in its own process, and reports the process's
peak resident memory (`os.wait4`'s ru_maxrss) and wall time. With a fixed activation budget the chunks keep
the peak flat while the time grows linearly with the concepts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from axjax.benchmarks.synthetic_concepts import replicate_concepts  # noqa: E402

_CONCEPTS = flags.DEFINE_list("concepts", ["10", "100", "500"], "Concept counts to measure.")
_BUDGET = flags.DEFINE_float("memory_budget_gb", 0.25, "Activation budget per chunk (GB).")
_METHODS = flags.DEFINE_string("methods", "DiffMean,PCA,LAT", "Methods to train.")
_POSITIVES = flags.DEFINE_integer("train_positives", 4, "Training positives per concept (and --max_examples/2).")
_EVAL_ROWS = flags.DEFINE_integer("eval_rows", 2, "Eval rows per concept and category.")
_LAYER = flags.DEFINE_integer("layer", 12, "Layer.")
_MODEL = flags.DEFINE_string("model", "gemma-3-270m", "Model.")


def measure(folder: str, out: str) -> tuple[float, float, str]:
  """(peak RSS in GB, wall seconds, last stdout line) of one detection run."""
  cmd = [sys.executable, "-m", "experiments.detect", f"--data={folder}", f"--layer={_LAYER.value}",
         f"--model={_MODEL.value}", f"--methods={_METHODS.value}", f"--max_examples={2 * _POSITIVES.value}",
         f"--memory_budget_gb={_BUDGET.value}", f"--output_dir={out}"]
  start = time.perf_counter()
  with open(out + ".log", "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(f"error: {' '.join(cmd)} failed; see {out}.log")
  chunks = [line for line in open(out + ".log") if " chunks of up to " in line]
  return usage.ru_maxrss / 1e6, wall, chunks[0].strip() if chunks else "1 chunk"


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in map(int, _CONCEPTS.value):
      folder = replicate_concepts("concept10/prod_2b_l20_v1", os.path.join(tmp, f"c{n}"), n,
                                  train_positives=_POSITIVES.value, eval_rows=_EVAL_ROWS.value)
      peak, wall, chunks = measure(folder, os.path.join(tmp, f"out{n}"))
      rows.append((n, chunks, peak, wall))
      print(f"{n} concepts: peak RSS {peak:.2f} GB, {wall:.0f} s ({chunks})", flush=True)
  print("\n| concepts | chunking | peak RSS (GB) | wall (s) | s per concept |\n|---|---|---|---|---|")
  for n, chunks, peak, wall in rows:
    print(f"| {n} | {chunks} | {peak:.2f} | {wall:.0f} | {wall / n:.2f} |")


if __name__ == "__main__":
  app.run(main)
