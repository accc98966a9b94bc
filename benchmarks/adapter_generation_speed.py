"""Steered generation with per-concept LoRA adapters: axjax's per-row adapters in one compiled batch vs
transformers + peft switching adapters per concept, on the embedded Gemma 3 270M (rows/second, side by side).

  axjax  `steer_generate`: rows of `--concepts` concepts mixed in batches of `--batch` rows, each row gathering
         its own concept's LoRA from the stack (one compiled decode loop with a KV cache).
  torch  AxBench's way: a peft model holding every concept's adapter; per concept `set_adapter`, then `generate`
         its rows in batches of at most `--reference_batch` (AxBench's steering batch, 10).

Both sides get the same left-padded random prompts (`--prompt_length` wide, half to all of it real) and sample
exactly `--new_tokens` tokens per row at temperature 1.0 (no top-k/top-p; transformers with min_new_tokens). The
adapters are random (peft's A init, B ~ N(0, --scale)): this measures speed; the script prints how many rows'
greedy next token they change and that both sides' logits agree with them. One warm-up each (JAX compile time
excluded, reported apart), then `--repeats` timed runs taking turns; the ratio uses the medians.

  python benchmarks/adapter_generation_speed.py [--rows 20] [--concepts 10] [--new_tokens 32]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import axjax  # noqa: E402
from axjax.benchmarks.achieved_flops import left_padded_prompts  # noqa: E402
from axjax.benchmarks.side_by_side import time_alternating, torch_reference  # noqa: E402
from axjax.generation.sampling import SamplingConfig  # noqa: E402
from axjax.methods.adapter_training import Adapters, adapter_hyperparameters, adapters_from  # noqa: E402
from axjax.model.adapters import Lora  # noqa: E402
from axjax.steering_eval.adapter_generation import steer_generate  # noqa: E402


def log(message: str) -> None:
  """A progress line on stderr."""
  print(f"[adapter_generation_speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def random_stack(config: axjax.GemmaConfig, adapters: Adapters, concepts: int, scale: float,
                 seed: int) -> dict[str, np.ndarray]:
  """LoRA params [C, L, ...]: A as peft initialises it (uniform +-1/sqrt(d_in)), B ~ N(0, scale) (peft's is 0)."""
  keys = jax.random.split(jax.random.key(seed), concepts + 1)
  stack = adapters.init(config, keys[:concepts])
  b = scale * jax.random.normal(keys[-1], stack["b"].shape)
  return {"a": np.asarray(stack["a"]), "b": np.asarray(b, np.float32)}


def peft_model(reference, adapters: Adapters, stack: dict[str, np.ndarray]):
  """A peft model with adapter "c{i}" per concept of the stack (peft's lora_A [r, d_in] = a^T, lora_B = b^T)."""
  import peft
  import torch

  config = peft.LoraConfig(r=adapters.rank, lora_alpha=adapters.alpha, use_rslora=True, target_modules=["o_proj"],
                           layers_to_transform=list(adapters.layers), lora_dropout=0.0)
  concepts = len(stack["a"])
  wrapped = peft.get_peft_model(reference, config, adapter_name="c0")
  for c in range(1, concepts):
    wrapped.add_adapter(f"c{c}", config)
  layers = wrapped.base_model.model.model.layers
  with torch.no_grad():
    for c in range(concepts):
      for i, layer in enumerate(adapters.layers):
        o_proj = layers[layer].self_attn.o_proj
        o_proj.lora_A[f"c{c}"].weight.copy_(torch.from_numpy(stack["a"][c, i].T.copy()))
        o_proj.lora_B[f"c{c}"].weight.copy_(torch.from_numpy(stack["b"][c, i].T.copy()))
  return wrapped.eval()


def check_adapters(model, wrapped, adapters: Adapters, stack, ids, mask, concept_index) -> dict[str, Any]:
  """For every concept's first row: the largest |logit| difference between peft and axjax at the last prompt
  position, and whether the adapter changes the greedy next token (against axjax without adapters)."""
  import torch

  lora = Lora(adapters.layers, adapters.alpha, 0.0)
  rows = [int(np.flatnonzero(concept_index == c)[0]) for c in np.unique(concept_index)]
  edited = np.asarray(axjax.forward(model.params, model.config, ids[rows], mask[rows], lora=lora,
                                    lora_params=jax.tree.map(lambda x: jnp.asarray(x[concept_index[rows]]),
                                                             stack)).logits[:, -1])
  plain = np.asarray(axjax.forward(model.params, model.config, ids[rows], mask[rows]).logits[:, -1])
  diffs = []
  for j, r in enumerate(rows):
    wrapped.set_adapter(f"c{concept_index[r]}")
    positions = np.maximum(np.cumsum(mask[r:r + 1], axis=1) - 1, 0)
    with torch.inference_mode():
      theirs = wrapped(input_ids=torch.from_numpy(ids[r:r + 1]).long(),
                       attention_mask=torch.from_numpy(mask[r:r + 1]).long(),
                       position_ids=torch.from_numpy(positions)).logits[0, -1].numpy()
    diffs.append(float(np.abs(theirs - edited[j]).max()))
  return {"max_logit_diff_peft_vs_axjax": max(diffs), "max_logit_scale": float(np.abs(edited).max()),
          "greedy_changed": int((edited.argmax(-1) != plain.argmax(-1)).sum()), "checked": len(rows)}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=20, help="steered rows generated by each side")
  parser.add_argument("--concepts", type=int, default=10, help="adapters; row i uses concept i mod concepts")
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--prompt_length", type=int, default=32)
  parser.add_argument("--batch", type=int, default=None, help="axjax rows per compiled batch (default: all rows)")
  parser.add_argument("--reference_batch", type=int, default=10, help="transformers rows per generate call")
  parser.add_argument("--layers", default="auto", help="LoRA layers ('auto': AxBench's 2B set scaled to the depth)")
  parser.add_argument("--scale", type=float, default=0.05, help="standard deviation of the random B matrices")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--torch_threads", type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv=None) -> None:
  import torch

  args = parse_args(argv)
  command = "python benchmarks/adapter_generation_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
  torch.set_num_threads(args.torch_threads)
  model = axjax.load(axjax.EMBEDDED_MODEL)
  config = model.config
  adapters = adapters_from("LoRA", config, adapter_hyperparameters("LoRA", config, {"layers": args.layers}))
  stack = random_stack(config, adapters, args.concepts, args.scale, args.seed)
  ids, mask = left_padded_prompts(args.rows, args.prompt_length, config.vocab_size, args.seed)
  concept_index = np.arange(args.rows) % args.concepts
  keys = jax.random.split(jax.random.key(args.seed), args.rows)
  sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0)
  batch = args.batch or args.rows
  wrapped = peft_model(torch_reference(model, torch.float32), adapters, stack)
  check = check_adapters(model, wrapped, adapters, stack, ids, mask, concept_index)
  log(f"adapters checked: {check}")

  def run_axjax():
    for start in range(0, args.rows, batch):
      part = np.arange(start, start + batch).clip(max=args.rows - 1)  # a fixed batch shape
      out = steer_generate(model.params, config, adapters, stack, concept_index[part], ids[part], mask[part],
                           keys[part], sampling)
      jax.block_until_ready(out.tokens)

  def run_torch():
    for c in range(args.concepts):
      wrapped.set_adapter(f"c{c}")
      rows = np.flatnonzero(concept_index == c)
      for start in range(0, len(rows), args.reference_batch):
        part = rows[start:start + args.reference_batch]
        with torch.inference_mode():
          wrapped.generate(input_ids=torch.from_numpy(ids[part]).long(),
                           attention_mask=torch.from_numpy(mask[part]).long(), do_sample=True, temperature=1.0,
                           top_k=0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)

  warm, seconds = time_alternating({"axjax": run_axjax, "torch": run_torch}, args.repeats, log)
  ratio = seconds["torch"] / seconds["axjax"]
  per_concept = -(-args.rows // args.concepts)
  print(f"\n    {command}\n")
  print(f"{args.rows} rows of {args.concepts} LoRA concepts (layers {'+'.join(map(str, adapters.layers))}), "
        f"{args.prompt_length}-wide prompts, {args.new_tokens} sampled tokens per row; axjax batch {batch}, "
        f"torch {args.concepts} adapters x batches of <= {min(per_concept, args.reference_batch)}; "
        f"{jax.devices()[0].platform}, load average {os.getloadavg()[0]:.2f}\n")
  print("| side | warm-up s | median s | rows/s |")
  print("|---|---|---|---|")
  for name in seconds:
    print(f"| {name} | {warm[name]:.1f} | {seconds[name]:.1f} | {args.rows / seconds[name]:.2f} |")
  print(f"\n| measure | axjax / transformers + peft |\n|---|---|\n| rows/s | **{ratio:.2f}x** |")
  print(f"\nadapter check: {check}")


if __name__ == "__main__":
  main()
