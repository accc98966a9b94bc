"""PREDICTED accelerator figures for a Concept500 ReFT-r1 run, from `bench_model --suite=predict` outputs.

  python -m experiments.bench_model --suite=predict --output=bench_out/predict_2b.json
  python -m experiments.bench_model --suite=predict --predict_preset=gemma-2-9b --output=bench_out/predict_9b.json
  python benchmarks/concept500_prediction.py bench_out/predict_2b.json bench_out/predict_9b.json

For each model and device: the largest concept chunk whose step (XLA's memory analysis, fitted linearly in
the concept count, plus each concept's activation cache) fits one device, and the time of ReFT-r1's training
over 500 concepts implied by 40% of the device's peak FLOP/s (XLA's FLOPs per concept-step, scans unrolled).
The chunk assumes each device holds only its own concepts' activations; axjax today copies a chunk's whole
activation cache to every device, so on a multi-device host its chunks are smaller than this. Nothing here ran
on an accelerator.
"""

from __future__ import annotations

import json
import sys

# (name, devices, dense bf16 peak FLOP/s per device, memory per device in bytes)
DEVICES = [("H100/H200-class GPU, 80 GB", 1, 989e12, 80e9), ("TPU v5e-8 (per chip: 16 GB)", 8, 197e12, 16e9)]
CONCEPTS, UTILISATION = 500, 0.40


def rows(result: dict) -> list[str]:
  """Markdown rows for one predict output."""
  model = f"d={result['preset_shape']['hidden_size']}, {result['preset_shape']['num_layers']} layers"
  out = []
  for device, count, peak, memory in DEVICES:
    for remat, fit in result["memory_fit"].items():
      if memory <= fit["a_bytes"]:
        out.append(f"| {model} | {device} | {remat.replace('_', ' ')} | does not fit: {fit['a_bytes'] / 1e9:.0f} GB "
                   "before any concept (needs the model axis) | - |")
        continue
      chunk = int((memory - fit["a_bytes"]) // fit["b_bytes_per_concept_with_cache"])
      points = [p for p in result["points"] if p["remat"] == (remat == "remat")]
      flops_per_concept_step = max(p["flops"] / p["concepts"] for p in points)
      seconds = CONCEPTS * result["steps_per_concept"] * flops_per_concept_step / (UTILISATION * peak * count)
      out.append(f"| {model} | {device} | {remat.replace('_', ' ')} | {chunk} | {seconds / 60:.0f} min |")
  return out


def main(paths: list[str]) -> None:
  if not paths:
    sys.exit(__doc__)
  print("| model | device | remat | concepts per device (chunk) | ReFT-r1 training, Concept500, 40% of peak |")
  print("|---|---|---|---|---|")
  for path in paths:
    for line in rows(json.load(open(path))["predict"]):  # bench_model's output wraps the suite's result
      print(line)


if __name__ == "__main__":
  main(sys.argv[1:])
