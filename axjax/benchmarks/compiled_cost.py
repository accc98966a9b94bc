"""Predicted cost of ReFT-r1's joint training step from XLA's compiled analyses, without running the step.

The step (`joint_training.joint_step` with `ReftR1Objective`, as `fit._train` builds it) is lowered on abstract
shapes (`jax.ShapeDtypeStruct`: nothing of the model is allocated) and compiled for the local backend (the CPU
here). From the compiled program we read

- `memory_analysis()`: argument, output, alias and temp bytes of the program that really runs;
- `cost_analysis()`: FLOPs and bytes accessed. XLA's HloCostAnalysis counts the body of a while loop ONCE, not
  once per iteration, so the scans of the step (the layers above L, the vocabulary chunks of the LM loss) would
  be undercounted many times over. The cost is therefore read from a second compile of the same step with every
  `jax.lax.scan` fully unrolled (`_unrolled_scans`): the same operations, straight-line. The rolled program's own
  figures are kept as `*_rolled` to show the difference.

From these: arithmetic intensity (FLOPs / bytes), a roofline step time max(FLOPs / peak, bytes / bandwidth), an
analytic FLOP count to check XLA's, and the largest concept chunk C whose bytes fit a memory budget, from a
linear fit bytes(C) = a + b C over the compiled points.

All of it is a prediction for an accelerator made on another backend. XLA's CPU bytes are an upper estimate:
the CPU compiler keeps most bf16 elementwise work (and some dot operands) in f32 with extra convert copies,
fuses less than a GPU compiler, and its cost analysis counts a fusion that slices a small piece out of a large
operand (one vocabulary chunk of the padded table, the upper layers out of the layer stack) as reading the whole
operand. `weight_traffic_floor` gives the other end: the frozen weights and the step's inputs read once per pass.
Temp bytes likewise include f32 copies a GPU program would not make, so the chunk sizes lean conservative.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from axjax.methods import objectives
from axjax.methods.joint_training import OptimConfig, init_state, joint_step
from axjax.methods.registry import hyperparameters, method
from axjax.model.config import GemmaConfig
from axjax.model.lm_loss import token_nll
from axjax.model.transformer import init_params

S = jax.ShapeDtypeStruct
_VOCAB_CHUNK = token_nll.__defaults__[0]  # token_nll's vocabulary chunk: the table is padded to whole chunks


@dataclasses.dataclass(frozen=True)
class StepShape:
  """What one joint step works on, per concept. Defaults: AxBench's Gemma-2-2B ReFT-r1 setting."""

  config: GemmaConfig
  layer: int = 20
  batch: int = 6  # rows per concept per step (AxBench's 2B batch_size)
  length: int = 256  # T: tokens per row (AxBench's 2B chat prompt + response is ~150-300 tokens)
  loss_positions: int = 128  # P: output tokens per row that the LM loss reads (B x P packed per concept)
  dtype: Any = jnp.bfloat16  # model parameters, and the cached activations (acts, pad_acts) likewise
  examples_per_concept: int = 144  # Concept500: 72 positives + 72 negatives per concept


def abstract_batch(config: GemmaConfig, concepts: int, batch: int, length: int, positions: int,
                   act_dtype) -> tuple[dict[str, S], dict[str, S]]:
  """(examples, extra) of one step as abstract shapes: the per-row arrays `ReftR1Objective` reads (what
  `fit._train` puts in `examples`) for the step's concepts x batch rows, and the per-step arrays [C, ...]
  (`StepBatch.extra`: each concept's loss positions, packed by `batching.packed_loss_positions`, `positions` per
  row). The one place to adapt when the objective's batch keys change.
  """
  rows, d = concepts * batch, config.hidden_size
  examples = {
      "acts": S((rows, length, d), act_dtype),  # residual stream after layer L
      "pad_acts": S((rows, d), act_dtype),  # each row's first pad token (AxBench's top-k pad copies)
      "position_mask": S((rows, length), jnp.float32),
      "mask": S((rows, length), jnp.bool_),
      "tokens": S((rows, length), jnp.int32),
  }
  extra = {
      "loss_index": S((concepts, batch * positions), jnp.int32),  # flat b * T + t - 1 into the concept's batch
      "loss_valid": S((concepts, batch * positions), jnp.float32),
  }
  return examples, extra


def _nbytes(tree) -> int:
  return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def row_bytes(shape: StepShape) -> int:
  """Bytes of one example row of the activation cache (the per-row arrays of `abstract_batch`)."""
  return _nbytes(abstract_batch(shape.config, 1, 1, shape.length, shape.loss_positions, shape.dtype)[0])


def step_program(shape: StepShape, concepts: int, remat: bool) -> tuple[OptimConfig, Callable, tuple]:
  """(OptimConfig, loss, abstract arguments of `joint_step` after those two) for `concepts` concepts.

  `examples` holds only the C x batch rows of one step; in a real run it is the whole activation cache.
  """
  config = shape.config
  hp = hyperparameters(method("ReFT-r1"), config)
  upper = objectives.UpperModel(config, shape.layer, remat=remat)
  loss = objectives.ReftR1Objective(upper, hp["topk"], hp["coeff_latent_l1_loss"],
                                    pad_in_topk=hp["topk_candidates"] == "axbench")
  steps = hp["n_epochs"] * -(-shape.examples_per_concept // shape.batch)
  # As fit._train builds ReFT-r1's optimizer: AxBench's clipping and unit-norm w.
  cfg = OptimConfig(lr=hp["lr"], total_steps=steps, weight_decay=hp["weight_decay"], clip_norm=1.0,
                    unit_norm_key="w")
  params = {"w": S((concepts, config.hidden_size), jnp.float32)}
  opt_state = jax.eval_shape(functools.partial(init_state, cfg), params)
  examples, extra = abstract_batch(config, concepts, shape.batch, shape.length, shape.loss_positions, shape.dtype)
  indices = S((concepts, shape.batch), jnp.int32)
  weights = S((concepts, shape.batch), jnp.float32)
  step = S((), jnp.int32, weak_type=True)  # train_jointly passes a Python int
  frozen = jax.eval_shape(functools.partial(init_params, config, dtype=shape.dtype), jax.random.key(0))
  return cfg, loss, (params, opt_state, examples, indices, weights, extra, step, frozen)


@contextlib.contextmanager
def _unrolled_scans():
  """Every `jax.lax.scan` traced inside is fully unrolled, so cost analysis sees every iteration."""
  original = jax.lax.scan

  def scan(*args, **kwargs):
    kwargs["unroll"] = True
    return original(*args, **kwargs)

  jax.lax.scan = scan
  try:
    yield
  finally:
    jax.lax.scan = original


def _cost(compiled) -> dict[str, float]:
  """flops and bytes accessed of a compiled program (a dict, or a list of one dict per module in older JAX)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = {k: sum(float(c.get(k, 0.0)) for c in cost) for k in ("flops", "bytes accessed")}
  return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
  # Peak device bytes of the step: inputs, outputs and scratch; donated inputs share buffers with outputs.
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def analytic_flops(shape: StepShape, concepts: int, remat: bool) -> dict[str, float]:
  """Model FLOPs of one joint step, counted by hand (2 per multiply-add of every matmul).

  Per token and layer above L: the matmul weights touched (q, k, v, o, gate, up, down) and the attention scores
  and mixing over the full T x T (masked, not skipped). Forward once, again in the backward with remat, and the
  backward computes input gradients only (the model is frozen): 1x the weight matmuls, 2x the attention. The LM
  loss's custom VJP does two [N, d] x [d, V] matmuls in its forward (logits and softmax-weighted rows) over the
  chunk-padded vocabulary, and none in its backward.
  """
  c = shape.config
  rows = concepts * shape.batch
  tokens = rows * shape.length
  upper = c.num_layers - shape.layer - 1
  d, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  weights = d * q + 2 * d * kv + q * d + 3 * d * c.intermediate_size
  attention = 2 * 2 * shape.length * q  # QK^T and PV, per query token
  forward = upper * tokens * (2 * weights + attention)
  backward = upper * tokens * (2 * weights + 2 * attention)
  vocab = -(-c.vocab_size // _VOCAB_CHUNK) * _VOCAB_CHUNK
  lm_head = 2 * 2 * rows * shape.loss_positions * vocab * d
  layers = forward * (2 if remat else 1) + backward
  return {"layers": float(layers), "lm_head": float(lm_head), "total": float(layers + lm_head)}


def weight_traffic_floor(shape: StepShape, concepts: int, remat: bool) -> float:
  """A lower bound on the bytes one step moves: the frozen weights it must read, and its inputs, once each.

  The upper layers' matmul weights once per pass (forward, the remat recomputation, the input-gradient backward),
  the chunk-padded unembedding table twice (logits and softmax-weighted rows: two matmuls per chunk) plus its
  padding copy (`lm_loss._chunk_tables` pads the whole table every step: read V x d, write the padded table), and
  the step's rows of the activation cache. Activations between ops are not counted: at large C they dominate.
  """
  c = shape.config
  size = jnp.dtype(shape.dtype).itemsize
  d, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  upper = (c.num_layers - shape.layer - 1) * (d * q + 2 * d * kv + q * d + 3 * d * c.intermediate_size) * size
  vocab = -(-c.vocab_size // _VOCAB_CHUNK) * _VOCAB_CHUNK
  table = 2 * vocab * d * size + (c.vocab_size + vocab) * d * size
  examples, extra = abstract_batch(c, concepts, shape.batch, shape.length, shape.loss_positions, shape.dtype)
  return float(upper * (3 if remat else 2) + table + _nbytes(examples) + _nbytes(extra))


def analyse_point(shape: StepShape, concepts: int, remat: bool, log: Callable[[str], None] = lambda _: None,
                  compiler_options: dict[str, Any] | None = None) -> dict[str, Any]:
  """Compiles the step for `concepts` concepts (rolled, then with scans unrolled) and reads its analyses.

  `compiler_options` go to `.compile()` (tests pass {"xla_backend_optimization_level": 0}: the HLO, and so both
  analyses, are the same; only the machine code is less optimised and compiles faster).
  """
  cfg, loss, args = step_program(shape, concepts, remat)
  start = time.perf_counter()
  compiled = joint_step.lower(cfg, loss, *args).compile(compiler_options)
  rolled_seconds = time.perf_counter() - start
  memory, rolled = _memory(compiled), _cost(compiled)
  del compiled
  log(f"  C={concepts} remat={remat}: compiled in {rolled_seconds:.0f}s, {memory['total'] / 1e9:.2f} GB; "
      "compiling with unrolled scans for the cost")

  def fresh_step(*a):  # a new function: no trace cached from the rolled lowering can be reused
    return joint_step.__wrapped__(*a)

  start = time.perf_counter()
  with _unrolled_scans():
    unrolled = jax.jit(fresh_step, static_argnums=(0, 1)).lower(cfg, loss, *args).compile(compiler_options)
  unrolled_seconds = time.perf_counter() - start
  cost = _cost(unrolled)
  del unrolled
  examples = args[2]
  return {
      "concepts": concepts, "remat": remat, "rows": concepts * shape.batch,
      "flops": cost["flops"], "bytes_accessed": cost["bytes_accessed"],
      "arithmetic_intensity": cost["flops"] / max(cost["bytes_accessed"], 1.0),
      "flops_rolled": rolled["flops"], "bytes_accessed_rolled": rolled["bytes_accessed"],
      "analytic_flops": analytic_flops(shape, concepts, remat),
      "bytes_floor": weight_traffic_floor(shape, concepts, remat),
      "memory": memory, "step_rows_bytes": _nbytes(examples), "model_bytes": _nbytes(args[-1]),
      "compile_seconds": {"rolled": rolled_seconds, "unrolled": unrolled_seconds},
  }


def linear_fit(xs, ys) -> tuple[float, float, float]:
  """Least-squares a, b of y = a + b x, and the largest relative residual."""
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  if len(set(xs.tolist())) < 2:
    raise ValueError("a linear fit needs at least two distinct concept counts")
  b, a = np.polyfit(xs, ys, 1)
  return float(a), float(b), float(np.max(np.abs(a + b * xs - ys) / ys))


def largest_chunk(a: float, b: float, budget: float) -> int:
  """The largest C with a + b C <= budget (0 when even the fixed part a does not fit)."""
  return max(0, int(math.floor((budget - a) / b))) if b > 0 else 0


def predict(shape: StepShape, concepts: tuple[int, ...] = (1, 16, 64), remats: tuple[bool, ...] = (True, False),
            peak_flops: float = 989e12, peak_bandwidth: float = 3.35e12, budget_bytes: float = 80e9,
            log: Callable[[str], None] = lambda _: None, compiler_options: dict[str, Any] | None = None
            ) -> dict[str, Any]:
  """Every (remat, C) point, its roofline step time, and per remat setting the memory fit and chunk size.

  Defaults: an H100 SXM's dense bf16 peak (989 TFLOP/s) and HBM3 bandwidth (3.35 TB/s), an 80 GB budget.
  """
  c = shape.config
  hp = hyperparameters(method("ReFT-r1"), c)
  steps_per_concept = hp["n_epochs"] * -(-shape.examples_per_concept // shape.batch)
  per_row = row_bytes(shape)
  points, fits = [], {}
  for remat in remats:
    mine = []
    for n in concepts:
      p = analyse_point(shape, n, remat, log, compiler_options)
      compute, memory = p["flops"] / peak_flops, p["bytes_accessed"] / peak_bandwidth
      p["predicted_step_seconds"] = max(compute, memory)
      p["bound"] = "compute" if compute >= memory else "memory"
      p["predicted_step_seconds_analytic_flops"] = max(p["analytic_flops"]["total"] / peak_flops, memory)
      # The optimistic end: analytic FLOPs against the weight-traffic floor instead of XLA's CPU bytes.
      p["predicted_step_seconds_floor"] = max(p["analytic_flops"]["total"] / peak_flops,
                                              p["bytes_floor"] / peak_bandwidth)
      p["arithmetic_intensity_floor"] = p["analytic_flops"]["total"] / p["bytes_floor"]
      p["predicted_concepts_per_hour"] = 3600 * n / (steps_per_concept * p["predicted_step_seconds"])
      mine.append(p)
    points += mine
    if len({p["concepts"] for p in mine}) >= 2:
      a, b, residual = linear_fit([p["concepts"] for p in mine], [p["memory"]["total"] for p in mine])
      # With the chunk's whole activation cache resident instead of one step's rows (as fit._train passes it).
      b_cache = b + (shape.examples_per_concept - shape.batch) * per_row
      # The slope between the two largest C: the extrapolation beyond them leans on it (temp bytes grow a little
      # faster than linearly from small C).
      (c0, y0), (c1, y1) = sorted((p["concepts"], p["memory"]["total"]) for p in mine)[-2:]
      b_last = (y1 - y0) / (c1 - c0)
      fits["remat" if remat else "no_remat"] = {
          "a_bytes": a, "b_bytes_per_concept": b, "max_relative_residual": residual,
          "largest_chunk": largest_chunk(a, b, budget_bytes),
          "b_bytes_per_concept_with_cache": b_cache,
          "largest_chunk_with_cache": largest_chunk(a, b_cache, budget_bytes),
          "b_bytes_per_concept_last_segment": b_last,
          "largest_chunk_last_segment": largest_chunk(y1 - b_last * c1, b_last, budget_bytes)}
  return {
      "label": "PREDICTION from XLA's compiled analyses (nothing was run on an accelerator)",
      "backend": jax.default_backend(), "jax": jax.__version__,
      "preset_shape": {"hidden_size": c.hidden_size, "num_layers": c.num_layers, "vocab_size": c.vocab_size},
      "layer": shape.layer, "batch_per_concept": shape.batch, "length": shape.length,
      "loss_positions": shape.loss_positions, "dtype": jnp.dtype(shape.dtype).name,
      "examples_per_concept": shape.examples_per_concept, "steps_per_concept": steps_per_concept,
      "cache_bytes_per_concept": shape.examples_per_concept * per_row, "row_bytes": per_row,
      "peak_flops": peak_flops, "peak_bandwidth": peak_bandwidth, "budget_bytes": budget_bytes,
      "points": points, "memory_fit": fits,
  }


def format_table(result: dict[str, Any]) -> str:
  """The prediction as plain text: one line per point, then the memory fits."""
  r = result
  lines = [f"predict ({r['label']}; {r['backend']} compile): ReFT-r1 joint step, {r['dtype']}, layer {r['layer']}, "
           f"batch {r['batch_per_concept']}/concept, T={r['length']}, P={r['loss_positions']}; roofline "
           f"{r['peak_flops'] / 1e12:.0f} TFLOP/s, {r['peak_bandwidth'] / 1e12:.2f} TB/s"]
  head = ("remat", "C", "XLA TFLOP", "analytic TFLOP", "XLA GB moved", "floor GB", "XLA FLOP/B", "floor FLOP/B",
          "arg GB", "out GB", "temp GB", "total GB", "step ms XLA", "bound", "step ms floor", "concepts/h XLA")
  rows = [head]
  for p in r["points"]:
    m = p["memory"]
    rows.append((str(p["remat"]), str(p["concepts"]), f"{p['flops'] / 1e12:.2f}",
                 f"{p['analytic_flops']['total'] / 1e12:.2f}", f"{p['bytes_accessed'] / 1e9:.1f}",
                 f"{p['bytes_floor'] / 1e9:.1f}", f"{p['arithmetic_intensity']:.0f}",
                 f"{p['arithmetic_intensity_floor']:.0f}", f"{m['argument'] / 1e9:.2f}", f"{m['output'] / 1e9:.3f}",
                 f"{m['temp'] / 1e9:.2f}", f"{m['total'] / 1e9:.2f}", f"{p['predicted_step_seconds'] * 1e3:.2f}",
                 p["bound"], f"{p['predicted_step_seconds_floor'] * 1e3:.2f}",
                 f"{p['predicted_concepts_per_hour']:.0f}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
  lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
  for name, f in r["memory_fit"].items():
    lines.append(f"{name}: bytes(C) = {f['a_bytes'] / 1e9:.2f} GB + {f['b_bytes_per_concept'] / 1e9:.3f} GB x C "
                 f"(max residual {f['max_relative_residual']:.1%}); largest C in {r['budget_bytes'] / 1e9:.0f} GB: "
                 f"{f['largest_chunk']} (step rows only), {f['largest_chunk_with_cache']} (with the chunk's "
                 f"{r['examples_per_concept']}-example activation cache, {r['cache_bytes_per_concept'] / 1e6:.0f} MB "
                 f"per concept), {f['largest_chunk_last_segment']} (slope of the two largest C, "
                 f"{f['b_bytes_per_concept_last_segment'] / 1e9:.3f} GB per concept)")
  return "\n".join(lines)
