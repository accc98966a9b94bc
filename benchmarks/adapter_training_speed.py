"""LoReFT and LoRA training throughput (concepts per hour) on the embedded Gemma 3 270M, three ways side by side.

  joint          axjax: every concept in one `train_adapters` call (one compiled step, a vmap over concepts).
  one_at_a_time  axjax: `train_adapters(..., subset=[i])` for each concept in turn.
  torch          a PyTorch reference written the AxBench way, one concept at a time: transformers' Gemma3ForCausalLM
                 of the same weights (the embedded GGUF, dequantised by transformers), LoReFT by forward hooks at the
                 f5+l5 prompt positions (the tests' torch LoReFT), LoRA by peft (r4, alpha 32, rsLoRA, dropout 0.05 on
                 o_proj), AdamW, the linear schedule, HF's causal-LM loss over all logits, each concept's batches in
                 AxBench's order (`batching.minibatches`, so the same rows as axjax).

Every concept trains on its positives (AxBench's LoReFT/LoRA data), `--steps` optimizer steps of `--batch_size` x
`--accumulation` rows (one epoch of that many positives). Steady rates count the optimizer steps only: axjax's
step compilation (timed by wrapping `joint_training.compile_step`) and per-call setup are reported apart, and
axjax's frozen activation pass (`layer_activations` up to `Adapters.after`, once for all concepts, timed on its
second run) is listed separately and added in the "with activations" ratios. The torch reference starts every
concept from axjax's init, so the first step's losses must agree (LoRA starts from B = 0, so dropout does not
matter there); they are printed. Padding differs as in the originals: axjax pads every row to the example set's
width (the longest row + 1, rounded up to 32), torch each batch to its longest row (AxBench's collator).

  python benchmarks/adapter_training_speed.py [--concepts 3] [--steps 1] [--kinds LoReFT,LoRA]

The calls take turns (`turns`): concept 0 one at a time, concept 0 torch, the joint call, concept 1 one at a
time, concept 1 torch, ... so that a background load drifting over minutes hits every way alike. "compiles"
counts the steps the memory ladder (`objectives.MEMORY_LADDER`) compiled, fastest first, until one fit its
budget (on a CPU half the free host memory): 1 = the upper layers' activations kept for the backward pass,
2 = recomputed (remat), 3-4 = smaller vocabulary chunks as well.

`--torch_microbatch` splits each torch batch into pieces whose losses are weighted by their output tokens and
backpropagated one after another: the gradients equal one full batch's (HF's loss is the mean over the batch's
output tokens), and the peak memory of HF's full-vocabulary logits drops (18 rows x ~200 tokens x 262k float32
logits peaked at ~17 GB RSS on a 24 GB machine). Each piece keeps the whole batch's padded width.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import resource
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
from axjax.benchmarks.side_by_side import torch_reference  # noqa: E402
from axjax.data import batching  # noqa: E402
from axjax.data.axbench_format import read_axbench  # noqa: E402
from axjax.data.examples import LMExamples, lm_examples  # noqa: E402
from axjax.methods import joint_training  # noqa: E402
from axjax.methods.activations import layer_activations  # noqa: E402
from axjax.methods.adapter_training import (Adapters, adapter_hyperparameters, adapters_from,  # noqa: E402
                                            prepare_training, train_adapters)
from axjax.model.adapters import first_last_mask  # noqa: E402

KINDS = ("LoReFT", "LoRA")
WAYS = ("joint", "one_at_a_time", "torch")


def log(message: str) -> None:
  """A progress line on stderr."""
  print(f"[adapter_training_speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class CallTimes:
  """One training call: wall seconds, its compile seconds and count (the memory ladder may compile more than one
  step and keep the first that fits), setup seconds (before the first compile) and each optimizer step's seconds."""

  wall: float = 0.0
  compile: float = 0.0
  compiles: int = 0
  budget_gb: float = 0.0  # the memory budget the ladder compiled against (axjax)
  setup: float = 0.0
  steps: list[float] = dataclasses.field(default_factory=list)
  losses: list[list[float]] = dataclasses.field(default_factory=list)  # per step, one loss per concept


@contextlib.contextmanager
def timed_compiles(spans: list[tuple[float, float]]):
  """Records (start, end) of every `joint_training.compile_step` call (the AOT compile of the training step)."""
  original = joint_training.compile_step

  def timed(*args, **kwargs):
    start = time.perf_counter()
    step = original(*args, **kwargs)
    spans.append((start, time.perf_counter()))
    return step

  joint_training.compile_step = timed
  try:
    yield
  finally:
    joint_training.compile_step = original


def axjax_call(kind: str, model, examples: LMExamples, acts: np.ndarray, overrides: dict[str, Any],
               subset: list[int] | None) -> CallTimes:
  """One `train_adapters` call, timed: compile spans, then each step from the progress callbacks."""
  spans: list[tuple[float, float]] = []
  marks: list[float] = []

  def progress(done, total):
    marks.append(time.perf_counter())

  budget = joint_training.memory_budget() / 1e9
  start = time.perf_counter()
  with timed_compiles(spans):
    trained = train_adapters(kind, model, examples, acts, overrides=overrides, seed=0, subset=subset,
                             progress=progress)
  wall = time.perf_counter() - start
  compiled_at = spans[-1][1] if spans else start
  steps = np.diff([compiled_at] + marks).tolist()
  losses = trained.record["loss"].tolist()
  return CallTimes(wall, sum(e - s for s, e in spans), len(spans), budget, (spans[0][0] if spans else start) - start,
                   steps, losses)


def load_torch_model(model):
  """transformers' Gemma3ForCausalLM of the embedded GGUF (dequantised to float32 by transformers), frozen."""
  import torch

  reference = torch_reference(model, torch.float32)
  for p in reference.parameters():
    p.requires_grad_(False)
  return reference


def torch_rotation(u):
  """Rows of u orthonormalised in order (QR of u^T, diagonal of the triangular factor made positive), as axjax's
  `orthonormal_rows` and the tests' torch LoReFT."""
  import torch

  q, tri = torch.linalg.qr(u.T)
  sign = torch.where(torch.diagonal(tri) < 0, -1.0, 1.0)
  return (q * sign).T


def loreft_hooks(reference, layers, params, state):
  """Forward hooks editing each site's layer output h <- h + R^T (W h + b - R h) where state["where"] [B, T]."""

  def hook(p):
    def edit(module, inputs, output):
      import torch

      h = output[0] if isinstance(output, tuple) else output
      r = torch_rotation(p["rotation"])
      edited = h + (h @ p["weight"].T + p["bias"] - h @ r.T) @ r
      h = torch.where(state["where"][..., None], edited, h)
      return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
    return edit

  return [reference.model.layers[layer].register_forward_hook(hook(p)) for layer, p in zip(layers, params)]


class TorchTrainer:
  """The AxBench-way reference for one kind: builds the edited model once, then trains concepts one at a time."""

  def __init__(self, kind: str, reference, adapters: Adapters, examples: LMExamples, hp: dict[str, Any],
               microbatch: int):
    import peft
    import torch

    self.kind, self.adapters, self.examples, self.hp, self.microbatch = kind, adapters, examples, hp, microbatch
    self.state: dict[str, Any] = {}
    self.hooks = []
    if kind == "LoRA":
      config = peft.LoraConfig(r=adapters.rank, lora_alpha=adapters.alpha, use_rslora=True,
                               target_modules=["o_proj"], layers_to_transform=list(adapters.layers),
                               lora_dropout=hp["dropout"])
      self.model = peft.get_peft_model(reference, config)
    else:
      self.model = reference
      t = np.arange(examples.tokens.shape[1])
      prompt = examples.attention_mask & (t[None] < examples.prompt_lengths[:, None])
      self.where = np.asarray(first_last_mask(jnp.asarray(prompt), *adapters.positions))
    self.model.train()  # peft's LoRA dropout acts; Gemma itself has no dropout
    self.torch = torch

  def leaves(self, init: dict[str, np.ndarray]):
    """Trainable tensors set to one concept's axjax init (LoRA: peft's lora_A [r, d_in] = a^T, lora_B = b^T)."""
    torch = self.torch
    if self.kind == "LoReFT":
      for h in self.hooks:
        h.remove()
      params = [{k: torch.tensor(np.asarray(init[k][s]), requires_grad=True) for k in ("rotation", "weight", "bias")}
                for s in range(len(self.adapters.layers))]
      self.hooks = loreft_hooks(self.model, self.adapters.layers, params, self.state)
      return [p[k] for p in params for k in ("rotation", "weight", "bias")]
    leaves = []
    layers = self.model.base_model.model.model.layers
    for i, layer in enumerate(self.adapters.layers):
      o_proj = layers[layer].self_attn.o_proj
      a, b = o_proj.lora_A["default"].weight, o_proj.lora_B["default"].weight
      with torch.no_grad():
        a.copy_(torch.tensor(np.asarray(init["a"][i]).T))
        b.copy_(torch.tensor(np.asarray(init["b"][i]).T))
      leaves += [a, b]
    return leaves

  def batch_loss(self, rows: np.ndarray, scale: float) -> float:
    """HF's loss over one batch (mean NLL over its output tokens), backpropagated times `scale` in microbatches;
    rows are cut to the batch's longest real length (AxBench's collator pads to the longest)."""
    torch, ex = self.torch, self.examples
    width = int(ex.attention_mask[rows].sum(1).max())
    targets = ex.loss_mask[rows, 1:width].sum()
    total = 0.0
    for start in range(0, len(rows), self.microbatch):
      part = rows[start:start + self.microbatch]
      tokens = torch.tensor(ex.tokens[part, :width], dtype=torch.long)
      labels = torch.where(torch.tensor(ex.loss_mask[part, :width]), tokens, -100)
      if self.kind == "LoReFT":
        self.state["where"] = torch.tensor(self.where[part, :width])
      loss = self.model(input_ids=tokens, attention_mask=torch.tensor(ex.attention_mask[part, :width],
                                                                      dtype=torch.long), labels=labels).loss
      loss = loss * (ex.loss_mask[part, 1:width].sum() / targets)
      (loss * scale).backward()
      total += loss.item()
    return total

  def train(self, concept: int, init: dict[str, np.ndarray], seed: int = 0) -> CallTimes:
    """AxBench's reft.py / lora.py loop for one concept: per optimizer step `accumulation` batches, LoReFT's
    gradients summed (backward before dividing) and clipped, LoRA's losses divided first and unclipped."""
    import transformers

    torch, ex, hp = self.torch, self.examples, self.hp
    start = time.perf_counter()
    leaves = self.leaves(init)
    accum, epochs, summed = hp["gradient_accumulation_steps"], hp["n_epochs"], hp["accumulate"] == "sum"
    valid = ex.row_valid[[concept]]
    per_epoch = batching.steps_per_epoch(valid, hp["batch_size"])
    optimizer = torch.optim.AdamW(leaves, lr=hp["lr"], weight_decay=hp["weight_decay"], betas=(0.9, 0.999),
                                  eps=1e-8)
    scheduler = transformers.get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0,
                                           num_training_steps=epochs * max(1, per_epoch // accum))
    times = CallTimes(setup=time.perf_counter() - start)
    group, step_start = 0.0, time.perf_counter()
    for batch in batching.minibatches(valid, hp["batch_size"], epochs, seed, ex.concept_ids[[concept]]):
      step = batch.step % per_epoch
      rows = ex.index[concept][batch.positions[0][batch.weight[0]]]
      group += self.batch_loss(rows, 1.0 if summed else 1.0 / accum) / (1.0 if summed else accum)
      if (step + 1) % accum == 0 or step + 1 == per_epoch:
        if hp["max_grad_norm"]:
          torch.nn.utils.clip_grad_norm_(leaves, hp["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        times.steps.append(time.perf_counter() - step_start)
        times.losses.append([group])
        group, step_start = 0.0, time.perf_counter()
    times.wall = time.perf_counter() - start
    return times

  def close(self):
    """Removes the hooks, or peft's layers (the base model is then as loaded)."""
    for h in self.hooks:
      h.remove()
    if self.kind == "LoRA":
      self.model.unload()


def turns(ways: list[str], concepts: int) -> list[tuple[str, int | None]]:
  """The order of the timed calls: the per-concept ways take turns concept by concept, the joint call after the
  first turn, so a background load that drifts over minutes hits every way alike."""
  per_concept = [w for w in ways if w != "joint"]
  order: list[tuple[str, int | None]] = []
  for i in range(concepts):
    order += [(w, i) for w in per_concept]
    if i == 0 and "joint" in ways:
      order.append(("joint", None))
  return order or [("joint", None)]


def run_kind(kind: str, ways: list[str], reference, model, examples: LMExamples, acts: np.ndarray,
             overrides: dict[str, Any], microbatch: int) -> dict[str, list[CallTimes]]:
  """Every way's calls for one kind, in `turns` order; torch starts each concept from its axjax init."""
  hp = adapter_hyperparameters(kind, model.config, overrides)
  trainer = TorchTrainer(kind, reference, adapters_from(kind, model.config, hp), examples, hp,
                         microbatch) if "torch" in ways else None
  calls: dict[str, list[CallTimes]] = {w: [] for w in ways}
  try:
    for way, i in turns(ways, len(examples.concept_ids)):
      if way == "torch":
        init = prepare_training(kind, model.config, examples, acts, overrides=overrides, seed=0, subset=[i]).init
        c = trainer.train(i, jax.tree.map(lambda x: np.asarray(x)[0], init))
      else:
        c = axjax_call(kind, model, examples, acts, overrides, None if i is None else [i])
      calls[way].append(c)
      compiled = f"compile {c.compile:.1f}s ({c.compiles}x, budget {c.budget_gb:.1f} GB), " if c.compiles else ""
      log(f"  {kind} {way} [{'all' if i is None else i}]: wall {c.wall:.1f}s, {compiled}setup {c.setup:.1f}s, "
          "steps " + ", ".join(f"{t:.1f}s" for t in c.steps) + f", load {os.getloadavg()[0]:.1f}")
  finally:
    if trainer is not None:
      trainer.close()
  return calls


def activation_seconds(model, examples: LMExamples, layer: int) -> tuple[np.ndarray, float, float]:
  """The frozen pass to `layer` over every example row: activations, first run (compile included), second run."""
  times = []
  for _ in range(2):
    start = time.perf_counter()
    acts = layer_activations(model.params, model.config, examples.tokens, examples.attention_mask, layer)
    times.append(time.perf_counter() - start)
  return acts, times[0], times[1]


def summarise(kind: str, calls: dict[str, list[CallTimes]], concepts: int, act_first: float,
              act_steady: float) -> dict[str, Any]:
  """Per way: steps, steady seconds (optimizer steps only), concepts/hour, compile, setup, wall; the ratios."""
  ways = {}
  for way, runs in calls.items():
    steady = sum(sum(c.steps) for c in runs)
    ways[way] = {"steps": sum(len(c.steps) for c in runs), "steady_s": steady,
                 "concepts_per_hour": 3600 * concepts / steady, "compile_s": sum(c.compile for c in runs),
                 "compiles": sum(c.compiles for c in runs),
                 "setup_s": sum(c.setup for c in runs), "wall_s": sum(c.wall for c in runs),
                 "step_s": [s for c in runs for s in c.steps],
                 "first_step_losses": [c.losses[0] for c in runs]}
  out = {"kind": kind, "ways": ways, "activation_pass_s": {"first": act_first, "steady": act_steady}}
  speed = lambda w, extra=0.0: 1.0 / (ways[w]["steady_s"] + extra)
  if "joint" in ways and "one_at_a_time" in ways:
    out["joint_vs_one_at_a_time"] = speed("joint") / speed("one_at_a_time")
  if "torch" in ways:
    for way in ("joint", "one_at_a_time"):
      if way in ways:
        out[f"{way}_vs_torch"] = speed(way) / speed("torch")
        out[f"{way}_vs_torch_with_activations"] = speed(way, act_steady) / speed("torch")
    if "one_at_a_time" in ways:  # each concept's pair of calls ran back to back
      out["one_at_a_time_vs_torch_per_concept"] = [sum(t.steps) / sum(o.steps) for o, t in
                                                   zip(calls["one_at_a_time"], calls["torch"])]
  return out


def print_tables(results: list[dict[str, Any]], args, command: str) -> None:
  """The markdown tables and the command."""
  print(f"\n    {command}\n")
  print(f"{args.concepts} concepts of {args.data}, {args.steps} optimizer step(s) per concept of {args.batch_size} x "
        f"{args.accumulation} positives, float32, {jax.devices()[0].platform}, load average "
        f"{os.getloadavg()[0]:.2f}\n")
  print("| kind | way | optimizer steps | steady s | concepts/hour (steady) | compile s (compiles) | setup s | "
        "wall s |")
  print("|---|---|---|---|---|---|---|---|")
  for r in results:
    for way, w in r["ways"].items():
      print(f"| {r['kind']} | {way} | {w['steps']} | {w['steady_s']:.1f} | {w['concepts_per_hour']:.1f} | "
            f"{w['compile_s']:.1f} ({w['compiles']}) | {w['setup_s']:.1f} | {w['wall_s']:.1f} |")
    act = r["activation_pass_s"]
    print(f"| {r['kind']} | axjax activation pass (all concepts) | - | {act['steady']:.1f} | - | "
          f"{act['first'] - act['steady']:.1f} (first run - second) | - | {act['first'] + act['steady']:.1f} |")
  print("\n| kind | joint / one at a time | joint / torch | one at a time / torch | joint / torch, with activations "
        "| one at a time / torch, with activations |")
  print("|---|---|---|---|---|---|")
  fmt = lambda r, k: f"{r[k]:.2f}x" if k in r else "-"
  for r in results:
    print(f"| {r['kind']} | {fmt(r, 'joint_vs_one_at_a_time')} | {fmt(r, 'joint_vs_torch')} | "
          f"{fmt(r, 'one_at_a_time_vs_torch')} | {fmt(r, 'joint_vs_torch_with_activations')} | "
          f"{fmt(r, 'one_at_a_time_vs_torch_with_activations')} |")
  for r in results:
    if "one_at_a_time_vs_torch_per_concept" in r:
      print(f"\n{r['kind']}: one at a time / torch per concept (each pair back to back): "
            + ", ".join(f"{x:.2f}x" for x in r["one_at_a_time_vs_torch_per_concept"]))
  print("\nFirst-step losses per concept (the same init on every side):")
  for r in results:
    for way, w in r["ways"].items():
      flat = [x for losses in w["first_step_losses"] for x in losses]
      print(f"  {r['kind']} {way}: " + ", ".join(f"{x:.4f}" for x in flat))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--concepts", type=int, default=3, help="concepts trained by every way")
  parser.add_argument("--steps", type=int, default=1, help="optimizer steps per concept (one epoch of steps x "
                      "batch_size x accumulation positives)")
  parser.add_argument("--kinds", default=",".join(KINDS), help="comma list of LoReFT, LoRA")
  parser.add_argument("--ways", default=",".join(WAYS), help="comma list of joint, one_at_a_time, torch")
  parser.add_argument("--data", default="concept10/prod_2b_l20_v1")
  parser.add_argument("--batch_size", type=int, default=18, help="rows per batch (AxBench's 2B: 18)")
  parser.add_argument("--accumulation", type=int, default=2, help="batches per optimizer step (AxBench's 2B: 2)")
  parser.add_argument("--torch_microbatch", type=int, default=6, help="rows per torch forward/backward piece")
  parser.add_argument("--torch_threads", type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument("--output", default=None, help="JSON file for every figure (absolute times included)")
  args = parser.parse_args(argv)
  args.kinds = args.kinds.split(",")
  args.ways = args.ways.split(",")
  if not set(args.kinds) <= set(KINDS) or not set(args.ways) <= set(WAYS):
    parser.error(f"--kinds takes {', '.join(KINDS)}; --ways takes {', '.join(WAYS)}")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  command = "python benchmarks/adapter_training_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
  model = axjax.load(axjax.EMBEDDED_MODEL)
  data = read_axbench(args.data, max_concepts=args.concepts)
  positives = args.steps * args.batch_size * args.accumulation
  examples = lm_examples(data, model.tokenizer, concept_ids=[c.concept_id for c in data.concepts], positions="all",
                         max_examples=2 * positives)
  if examples.row_valid.sum(1).min() < positives:
    raise SystemExit(f"a concept has fewer than {positives} positives: lower --steps")
  log(f"{len(examples.concept_ids)} concepts x {positives} positives, rows {examples.tokens.shape}")
  reference = None
  if "torch" in args.ways:
    import torch

    torch.set_num_threads(args.torch_threads)
    start = time.perf_counter()
    reference = load_torch_model(model)
    log(f"torch model loaded in {time.perf_counter() - start:.1f}s")
  overrides = {"n_epochs": 1, "batch_size": args.batch_size, "gradient_accumulation_steps": args.accumulation}
  results = []
  for kind in args.kinds:
    adapters = adapters_from(kind, model.config, adapter_hyperparameters(kind, model.config, overrides))
    acts, act_first, act_steady = activation_seconds(model, examples, adapters.after)
    log(f"{kind}: layers {adapters.layers}, activation pass after layer {adapters.after}: {act_first:.1f}s first, "
        f"{act_steady:.1f}s second")
    calls = run_kind(kind, args.ways, reference, model, examples, acts, overrides, args.torch_microbatch)
    results.append(summarise(kind, calls, len(examples.concept_ids), act_first, act_steady))
    del acts
  print_tables(results, args, command)
  print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")
  if args.output:
    pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as f:
      json.dump({"command": command, "args": vars(args), "results": results, "load_average": os.getloadavg(),
                 "versions": {"jax": jax.__version__}}, f, indent=1)


if __name__ == "__main__":
  main()
