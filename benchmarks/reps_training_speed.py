"""RePS training throughput (concepts per hour) on the embedded Gemma 3 270M: SV-RePS three ways side by side.

  joint          axjax: every concept in one `train_preference` call (one compiled step, a vmap over concepts).
  one_at_a_time  axjax: `train_preference` for each concept alone (its own pairs and cached stream).
  torch          a PyTorch reference written the upstream way (axbench/models/preference_model.py), one concept at
                 a time: transformers' Gemma3ForCausalLM of the same weights, the vector edit by a forward hook on
                 layer L ((alpha + b) v, the null-out for alpha = 0), per pair type batches of [winners; losers]
                 (`--torch_microbatch` pairs each, gradients accumulated: the whole step's) run twice (the
                 unedited reference under no_grad, then the edited policy), scaled SimPO with the code's lengths,
                 the step's loss the mean over its pairs, clipping 1, AdamW, linear decay.

Every way trains the same pairs with the same factors (axjax's step plan, `prepare_preference`) from the same init,
so the first step's losses must agree; they are printed. Steady rates count the optimizer steps only; axjax's
compile, its frozen pass to layer L and its once-per-sequence reference log-probs are listed apart (torch
recomputes the reference every step, as upstream). The calls take turns concept by concept (as in
`adapter_training_speed.py`) so that a drifting background load hits every way alike.

  python benchmarks/reps_training_speed.py [--concepts 3] [--steps 2] [--response_tokens 64]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import axjax  # noqa: E402
from axjax.benchmarks.side_by_side import torch_reference  # noqa: E402
from axjax.data.axbench_format import read_axbench  # noqa: E402
from axjax.data.preference_examples import positive_instructions, preference_examples  # noqa: E402
from axjax.methods.activations import layer_activations  # noqa: E402
from axjax.methods.own_responses import own_responses  # noqa: E402
from axjax.methods.preference_methods import training_hyperparameters  # noqa: E402
from axjax.methods.preference_training import (PreferenceEdit, prepare_preference, reference_logps,  # noqa: E402
                                               shared_arrays, train_preference)
from axjax.methods.registry import hyperparameters, method  # noqa: E402
from benchmarks.adapter_training_speed import CallTimes, timed_compiles, turns  # noqa: E402

WAYS = ("joint", "one_at_a_time", "torch")


def log(message: str) -> None:
  print(f"[reps_training_speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Concepts:
  """Each way's inputs: all concepts' pairs and stream (joint) and each concept's alone, built once."""

  def __init__(self, model, data, hp, layer: int, positives: int, response_tokens: int):
    self.model, self.hp, self.edit = model, hp, PreferenceEdit("vector", (layer,))
    ids = [c.concept_id for c in data.concepts]
    instructions = positive_instructions(data, ids, 2 * positives)
    start = time.perf_counter()
    responses = dict(zip(instructions, own_responses(model, instructions, max_new_tokens=response_tokens)))
    log(f"own responses ready in {time.perf_counter() - start:.1f}s")
    build = lambda cids: preference_examples(data, model.tokenizer, responses, concept_ids=cids,
                                             max_examples=2 * positives)
    self.all = build(ids)
    self.each = [build([c]) for c in ids]
    self.activation_s = []
    self.acts_all = self.stream(self.all)
    self.acts_each = [self.stream(e) for e in self.each]

  def stream(self, examples):
    """The frozen stream after layer L of the examples' shared sequences, timed."""
    arrays = shared_arrays(self.edit, examples, self.hp["length_norm"])
    start = time.perf_counter()
    acts = layer_activations(self.model.params, self.model.config, arrays["tokens"], arrays["mask"], self.edit.after)
    self.activation_s.append(time.perf_counter() - start)
    return acts


def axjax_call(concepts: Concepts, examples, acts) -> CallTimes:
  """One `train_preference` call, timed: compile spans, then each step from the progress callbacks."""
  spans, marks = [], []
  start = time.perf_counter()
  with timed_compiles(spans):
    _, record = train_preference(concepts.edit, concepts.model.params, concepts.model.config, examples, acts,
                                 concepts.hp, seed=0, progress=lambda step, _: marks.append(time.perf_counter()))
  wall = time.perf_counter() - start
  compiled_at = spans[-1][1] if spans else start
  return CallTimes(wall, sum(e - s for s, e in spans), len(spans), 0.0, (spans[0][0] if spans else start) - start,
                   np.diff([compiled_at] + marks).tolist(), np.asarray(record["loss"]).tolist())


class TorchTrainer:
  """Upstream's loop for one concept on the HF model, the vector edit by a forward hook on layer L."""

  def __init__(self, reference, layer: int):
    import torch

    self.torch, self.model, self.state = torch, reference, {}
    self.hook = reference.model.layers[layer].register_forward_hook(self._edit)

  def _edit(self, module, inputs, output):
    state = self.state
    if not state.get("on"):
      return output
    torch = self.torch
    h = output[0] if isinstance(output, tuple) else output
    v, b, factor = state["v"], state["b"], state["factor"][:, None, None]
    null = -torch.relu(h @ v + b)[..., None] / (v @ v)
    edited = h + torch.where(factor == 0, null, factor + b) * v
    h = torch.where(state["where"][..., None], edited, h)
    return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

  def logps(self, arrays, rows, factors, edited: bool):
    """Summed response log-probs of `rows` (cut to their longest), edited with `factors` or not."""
    torch = self.torch
    width = int(arrays["mask"][rows].sum(1).max())
    tokens = torch.tensor(arrays["tokens"][rows, :width], dtype=torch.long)
    self.state.update(on=edited, factor=torch.tensor(factors), where=torch.tensor(arrays["positions"][rows, :width]))
    logits = self.model(input_ids=tokens, attention_mask=torch.tensor(arrays["mask"][rows, :width],
                                                                      dtype=torch.long)).logits[:, :-1]
    logp = logits.gather(-1, tokens[:, 1:, None])[..., 0] - torch.logsumexp(logits, -1)  # no [B, T, V] copy
    return (logp * torch.tensor(arrays["loss_mask"][rows, 1:width])).sum(-1)

  def train(self, setup, arrays, micro: int) -> CallTimes:
    """Every step of one concept's `PreferenceSetup` (its pairs and factors), upstream's way, `micro` pairs per
    forward: each piece's loss (its pairs' sum over the step's pair count) is backpropagated in turn, so the
    gradient is the whole step's and the peak memory of the full-vocabulary logits that of a piece."""
    import transformers

    torch, hp = self.torch, setup.hyperparameters
    start = time.perf_counter()
    v = torch.tensor(np.asarray(setup.init["vector"][0]), requires_grad=True)
    b = torch.tensor(np.asarray(setup.init["bias"][0]), requires_grad=True)
    self.state.update(v=v, b=b)
    optimizer = torch.optim.AdamW([v, b], lr=hp["lr"], weight_decay=hp["weight_decay"])
    scheduler = transformers.get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0,
                                           num_training_steps=setup.optim.total_steps)
    times = CallTimes(setup=time.perf_counter() - start)
    lengths = torch.tensor(arrays["length"])
    for step in setup.batches:
      step_start = time.perf_counter()
      rows, factors, weight = step.rows[0], step.extra["factor"][0], step.weight[0]
      pairs = [np.flatnonzero(weight[p::4] > 0) * 4 + p for p in (0, 2)]  # orig_add (y_c over y), orig_sub
      total, loss = sum(map(len, pairs)), 0.0
      for index in (piece for p in pairs for piece in np.array_split(p, -(-len(p) // micro))):
        both = np.concatenate([index, index + 1])  # [winners; losers], one batch
        with torch.no_grad():
          ref = self.logps(arrays, rows[both], factors[both], edited=False)
        policy = self.logps(arrays, rows[both], factors[both], edited=True)
        n = len(index)
        lw, ll = lengths[rows[index]], lengths[rows[index + 1]]
        scale = torch.clamp(ref[n:] - ref[:n], min=1.0)  # the reference doc's max(ref_l - ref_w, 1)
        piece = -torch.nn.functional.logsigmoid(scale / lw * policy[:n] - policy[n:] / ll).sum() / total
        piece.backward()
        loss += piece.item()
      torch.nn.utils.clip_grad_norm_([v, b], hp["max_grad_norm"])
      optimizer.step()
      scheduler.step()
      optimizer.zero_grad()
      times.steps.append(time.perf_counter() - step_start)
      times.losses.append([loss])
    times.wall = time.perf_counter() - start
    return times

  def close(self):
    self.hook.remove()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--concepts", type=int, default=3)
  parser.add_argument("--steps", type=int, default=2, help="optimizer steps per concept (one epoch)")
  parser.add_argument("--batch_size", type=int, default=6, help="examples per step (SV-RePS 2B: 6)")
  parser.add_argument("--response_tokens", type=int, default=64, help="length of the model's own responses")
  parser.add_argument("--layer", type=int, default=12)
  parser.add_argument("--data", default="concept10/prod_2b_l20_v1")
  parser.add_argument("--ways", default=",".join(WAYS))
  parser.add_argument("--torch_threads", type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument("--torch_microbatch", type=int, default=2, help="pairs per torch forward/backward piece")
  args = parser.parse_args(argv)
  ways = args.ways.split(",")
  command = "python benchmarks/reps_training_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
  model = axjax.load(axjax.EMBEDDED_MODEL)
  data = read_axbench(args.data, max_concepts=args.concepts)
  positives = args.steps * args.batch_size
  hp = training_hyperparameters("SV-RePS", hyperparameters(method("SV-RePS"), model.config, {
      "n_epochs": 1, "batch_size": args.batch_size, "response_tokens": args.response_tokens}))
  concepts = Concepts(model, data, hp, args.layer, positives, args.response_tokens)
  arrays = [shared_arrays(concepts.edit, e, hp["length_norm"]) for e in concepts.each]
  start = time.perf_counter()
  refs = [reference_logps(model.params, model.config, a, arr, concepts.edit.after)
          for a, arr in zip(concepts.acts_each, arrays)]
  reference_s = time.perf_counter() - start
  trainer = None
  if "torch" in ways:
    import torch

    torch.set_num_threads(args.torch_threads)
    trainer = TorchTrainer(torch_reference(model, torch.float32), args.layer)
  calls = {w: [] for w in ways}
  try:
    for way, i in turns(ways, args.concepts):
      if way == "joint":
        c = axjax_call(concepts, concepts.all, concepts.acts_all)
      elif way == "one_at_a_time":
        c = axjax_call(concepts, concepts.each[i], concepts.acts_each[i])
      else:
        setup = prepare_preference(concepts.edit, model.config, concepts.each[i], concepts.acts_each[i], refs[i], hp)
        c = trainer.train(setup, arrays[i], args.torch_microbatch)
      calls[way].append(c)
      log(f"{way} [{'all' if i is None else i}]: wall {c.wall:.1f}s, compile {c.compile:.1f}s, steps "
          + ", ".join(f"{t:.1f}s" for t in c.steps) + f", load {os.getloadavg()[0]:.1f}")
  finally:
    if trainer is not None:
      trainer.close()
  steady = {w: sum(sum(c.steps) for c in runs) for w, runs in calls.items()}
  print(f"\n    {command}\n")
  print(f"{args.concepts} concepts of {args.data}, SV-RePS at layer {args.layer}, {args.steps} optimizer steps per "
        f"concept of {args.batch_size} examples (4 sequences each), own responses up to {args.response_tokens} "
        f"tokens, float32, {jax.devices()[0].platform}, load average {os.getloadavg()[0]:.2f}\n")
  print("| way | optimizer steps | steady s | concepts/hour (steady) | compile s | wall s |")
  print("|---|---|---|---|---|---|")
  for way, runs in calls.items():
    print(f"| {way} | {sum(len(c.steps) for c in runs)} | {steady[way]:.1f} | {3600 * args.concepts / steady[way]:.1f} "
          f"| {sum(c.compile for c in runs):.1f} | {sum(c.wall for c in runs):.1f} |")
  print(f"| axjax once per run: frozen pass to layer {args.layer} | - | {sum(concepts.activation_s[1:]):.1f} | - | - | - |")
  print(f"| axjax once per run: reference log-probs | - | {reference_s:.1f} | - | - | - |")
  ratio = lambda a, b: f"{steady[b] / steady[a]:.2f}x" if a in steady and b in steady else "-"
  print(f"\njoint / one at a time: {ratio('joint', 'one_at_a_time')}; joint / torch: {ratio('joint', 'torch')}; "
        f"one at a time / torch: {ratio('one_at_a_time', 'torch')}")
  print("\nFirst-step losses per concept (the same pairs, factors and init on every side):")
  for way, runs in calls.items():
    flat = [x for c in runs for x in c.losses[0]]
    print(f"  {way}: " + ", ".join(f"{x:.4f}" for x in flat))


if __name__ == "__main__":
  main()
