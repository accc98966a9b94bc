"""What the side-by-side benchmarks share: runs timed in turns, and the transformers twin of a loaded model.

PyTorch and transformers are imported inside `torch_reference` only: axjax never needs them at run time.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

from axjax.loading.load import LoadedModel


def time_alternating(runs: dict[str, Callable[[], Any]], repeats: int, log: Callable[[str], None]
                     ) -> tuple[dict[str, float], dict[str, float]]:
  """Warm-up seconds and median timed seconds per run: one warm-up each (compiles), then the runs take turns, so
  a change in background load hits every side alike."""
  warm = {}
  for name, run in runs.items():
    start = time.perf_counter()
    run()
    warm[name] = time.perf_counter() - start
    log(f"  warm-up {name}: {warm[name]:.2f}s")
  times = {name: [] for name in runs}
  for i in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
    log(f"  repeat {i + 1}/{repeats}: " + ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()))
  return warm, {name: statistics.median(t) for name, t in times.items()}


def torch_reference(model: LoadedModel, torch_dtype: Any):
  """transformers' causal LM of the checkpoint `model` was loaded from (an HF folder, or a GGUF file that
  transformers dequantises), at `torch_dtype`."""
  import transformers

  if os.path.isdir(model.source):
    return transformers.AutoModelForCausalLM.from_pretrained(model.source, dtype=torch_dtype)
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(model.source), gguf_file=os.path.basename(model.source), dtype=torch_dtype)
