"""Achieved GFLOP/s of axjax's heavy paths as ratios to the float32 matmul peak measured in the same run.

Three paths, each run as the library runs it:

- the activation pass: `methods.activations.layer_activations` up to layer L over the lm_all rows of some
  concepts (what `fit.ActivationCache` computes before any method trains);
- ReFT-r1's joint training step: `joint_training.joint_step` with `ReftR1Objective`, the rows, packed loss
  positions and optimizer built as `fit._train` builds them, the compiled step chosen as `train_jointly`
  chooses it (no recomputation of the upper layers when the step fits the memory budget);
- steered sampling: `generation.decode.generate_tokens` with a per-row steering vector (`axjax.steering`).

The peak is `jnp.dot` of float32 matrices of shapes this model runs (`PEAK_SHAPES`), jitted, warm, the best of
N runs of each shape; the best shape's 2 m n k / seconds is the peak. On a shared machine the load drifts, so the
peak is measured before and after every workload (one probe between two workloads serves both) and each ratio
uses the mean of its two probes. Every probe and workload also records the process's CPU seconds: CPU seconds /
(wall seconds x cores) is the share of the machine it got.

FLOPs count 2 per multiply-add of every matmul (elementwise work, softmax, norms are not counted):

- useful: real tokens only: the matmul weights each real token touches, attention (QK^T and PV) over its real
  causal keys within the layer's window, in training the input-gradient backward (the model is frozen) and the
  output layer at real output tokens only (logits and the softmax-weighted rows of the custom VJP:
  `lm_loss.token_nll`), in decoding the tokens that are kept;
- executed: the padded shapes as the program runs them (full T x T attention masked, not skipped; padded rows;
  the upper layers twice when rematerialised). Counted by hand, and for the activation pass and the training
  step also read from XLA's cost analysis of the compiled program with every `jax.lax.scan` unrolled
  (`compiled_cost._unrolled_scans`: XLA counts a while-loop body once). XLA also counts elementwise FLOPs.

Achieved GFLOP/s = useful FLOPs / wall seconds. executed / useful is the waste (padding, recomputation).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from axjax.benchmarks import compiled_cost
from axjax.data import batching
from axjax.generation.decode import generate_tokens
from axjax.generation.sampling import SamplingConfig
from axjax.methods import activations, objectives
from axjax.methods.activations import activation_batches, layer_activations
from axjax.methods.joint_training import OptimConfig, StepBatch, compile_step, init_state, joint_step, memory_budget
from axjax.methods.registry import hyperparameters, method
from axjax.model.config import GemmaConfig
from axjax.model.interventions import steering, steering_params

S = jax.ShapeDtypeStruct
Log = Callable[[str], None]
# (m, k, n) of the peak's matmuls: a layer's MLP at 2048 tokens, a vocabulary chunk of the output layer at 4096
# rows (lm_loss.token_nll's chunk is 16,384 rows of the table), and a square 2048^3.
PEAK_SHAPES = ((2048, 640, 2048), (4096, 640, 16384), (2048, 2048, 2048))
# Compile options for the cost-only compiles (scans unrolled): the HLO, and so XLA's cost analysis, is the same;
# only the machine code is less optimised, which compiles much faster.
COST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


def cores() -> int:
  return len(os.sched_getaffinity(0))


def _clock(fn: Callable[[], Any]) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) of fn(), which must block until its work is done."""
  cpu, wall = time.process_time(), time.perf_counter()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def _summary(walls: Sequence[float], cpus: Sequence[float]) -> dict[str, Any]:
  return {"seconds": list(walls), "best_seconds": min(walls), "median_seconds": statistics.median(walls),
          "cpu_seconds": list(cpus), "cpu_share": sum(cpus) / (sum(walls) * cores())}


# ----------------------------------------------------------------------------------------------- peak, bandwidth

_dot = jax.jit(jnp.dot)
_operands: dict[tuple[int, int, int], tuple[jax.Array, jax.Array]] = {}


def matmul_peak(shapes: Sequence[tuple[int, int, int]] = PEAK_SHAPES, repeats: int = 3) -> dict[str, Any]:
  """float32 `jnp.dot` [m, k] x [k, n] per shape, jitted and warm: best of `repeats`; the peak is the best shape."""
  per_shape = []
  for m, k, n in shapes:
    if (m, k, n) not in _operands:
      rng = np.random.default_rng(m * 7 + k * 3 + n)
      _operands[(m, k, n)] = (jnp.asarray(rng.standard_normal((m, k), np.float32)),
                              jnp.asarray(rng.standard_normal((k, n), np.float32)))
    a, b = _operands[(m, k, n)]
    _dot(a, b).block_until_ready()  # compile (first time) and warm
    walls, cpus = zip(*[_clock(lambda: _dot(a, b).block_until_ready()) for _ in range(repeats)])
    flops = 2.0 * m * k * n
    per_shape.append({"m": m, "k": k, "n": n, "flops": flops, **_summary(walls, cpus),
                      "gflops": flops / min(walls) / 1e9, "gflops_median": flops / statistics.median(walls) / 1e9})
    per_shape[-1]["gflops_per_cpu_second"] = flops / max(min(cpus), 1e-9) / 1e9
  best = max(per_shape, key=lambda p: p["gflops"])
  return {"gflops": best["gflops"], "shape": [best["m"], best["k"], best["n"]], "per_shape": per_shape,
          "gflops_per_cpu_second": max(p["gflops_per_cpu_second"] for p in per_shape),
          "cpu_share": sum(sum(p["cpu_seconds"]) for p in per_shape) / (
              sum(sum(p["seconds"]) for p in per_shape) * cores()),
          "load_average_1m": os.getloadavg()[0]}


def read_bandwidth(megabytes: int = 256, repeats: int = 3) -> dict[str, Any]:
  """Bytes read per second by a jitted float32 sum over a `megabytes` array (best of `repeats`). On a CPU this
  is a rough figure: one reduction may not saturate the memory system."""
  x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  walls, cpus = zip(*[_clock(lambda: total(x).block_until_ready()) for _ in range(repeats)])
  return {"bytes": x.nbytes, **_summary(walls, cpus), "gbytes_per_s": x.nbytes / min(walls) / 1e9}


# ------------------------------------------------------------------------------------------------- FLOP counting

def layer_weights(config: GemmaConfig) -> int:
  """Matmul weights of one decoder layer (q, k, v, o, gate, up, down)."""
  d, q, kv = config.hidden_size, config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  return d * q + 2 * d * kv + q * d + 3 * d * config.intermediate_size


def causal_keys(length: int, window: int) -> int:
  """Keys attended over all queries of a row of `length` real tokens: query i sees min(i + 1, window) (0 = all)."""
  if not window or length <= window:
    return length * (length + 1) // 2
  return window * (window + 1) // 2 + (length - window) * window


def _windows(config: GemmaConfig, layers: Sequence[int]) -> list[int]:
  return [config.sliding_window if config.sliding_layers[i] else 0 for i in layers]


def layers_flops(config: GemmaConfig, layers: Sequence[int], lengths: Sequence[int],
                 width: int | None = None) -> dict[str, float]:
  """Forward FLOPs of `layers` over rows of real `lengths` {matmul, attention}: useful (width None: real tokens,
  real causal keys in the window) or executed (every row `width` tokens, full width x width attention)."""
  q = config.num_heads * config.head_dim
  lengths = [int(n) for n in lengths]
  if width is None:
    tokens = sum(lengths)
    keys = sum(causal_keys(n, w) for w in _windows(config, layers) for n in lengths)
  else:
    tokens = width * len(lengths)
    keys = len(layers) * len(lengths) * width * width
  return {"matmul": 2.0 * layer_weights(config) * tokens * len(layers), "attention": 4.0 * q * keys}


def _total(parts: dict[str, float]) -> float:
  return float(sum(v for k, v in parts.items() if k != "total"))


def _abstract(tree):
  return jax.tree.map(lambda a: S(np.shape(a), jnp.result_type(a)), tree)


# ------------------------------------------------------------------------------ where the time goes (profiler)

@dataclasses.dataclass(frozen=True)
class OpInfo:
  """One top-level HLO instruction (what the CPU runtime runs and the profiler names)."""

  matmul: bool  # a dot/convolution, or a fusion or custom call containing one
  batched: bool  # ... with batch dimensions (attention's QK^T and PV; the projections have none)
  region: str  # "layers" (a while body running DecoderBlock ops itself), "other loop" (another while body), "top"


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\((.*)$")
_CALLED = re.compile(r"(?:calls|body|condition|to_apply)=%?([\w.\-]+)|called_computations=\{([^}]*)\}")


def hlo_op_table(hlo_texts: Sequence[str]) -> dict[str, OpInfo]:
  """{instruction name: OpInfo} for the instructions of the entry computation and of every while body in the
  compiled modules' text (`compiled.as_text()`). Names are unique within a module; modules of one workload that
  differ only in shapes name their instructions alike."""
  table: dict[str, OpInfo] = {}
  for text in hlo_texts:
    comps: dict[str, list[tuple[str, str, str]]] = {}
    current = entry = None
    for line in text.splitlines():
      if (m := _COMPUTATION.match(line)) and not line.startswith(" "):
        current = comps.setdefault(m.group(1), [])
        entry = m.group(1) if line.startswith("ENTRY") else entry
      elif current is not None and (m := _INSTRUCTION.match(line)):
        current.append(m.groups())
    # Computations each one calls, leaving out the bodies and conditions of while loops (walked separately).
    called = {c: [x for n, op, rest in ins if op != "while" for g in _CALLED.findall(rest) for x in
                  ([g[0]] if g[0] else [y.strip().lstrip("%") for y in g[1].split(",")]) if x]
              for c, ins in comps.items()}

    def walk(comp: str, test, seen=None) -> bool:
      seen = set() if seen is None else seen
      if comp in seen or comp not in comps:
        return False
      seen.add(comp)
      return any(test(op, rest) for _, op, rest in comps[comp]) or any(walk(c, test, seen) for c in called[comp])

    is_dot = lambda op, rest: op in ("dot", "convolution") or (op == "custom-call" and (
        "matmul" in rest.lower() or "gemm" in rest.lower()))
    is_batched = lambda op, rest: op == "dot" and "lhs_batch_dims" in rest
    decoder = lambda op, rest: "DecoderBlock" in rest
    bodies = {}
    for ins in comps.values():
      for _, op, rest in ins:
        if op == "while" and (m := re.search(r"body=%?([\w.\-]+)", rest)):
          bodies[m.group(1)] = "layers" if walk(m.group(1), decoder) else "other loop"
    for comp, ins in comps.items():
      if comp not in bodies and comp != entry:
        continue
      for name, op, rest in ins:
        mine = [c for g in _CALLED.findall(rest) for c in ([g[0]] if g[0] else []) if c]
        matmul = is_dot(op, rest) or (op in ("fusion", "custom-call") and any(walk(c, is_dot) for c in mine))
        batched = is_batched(op, rest) or (op == "fusion" and any(walk(c, is_batched) for c in mine))
        table[name] = OpInfo(matmul, matmul and batched, bodies.get(comp, "top"))
  return table


def category(info: OpInfo) -> str:
  where = {"layers": "layers", "other loop": "other loop", "top": "outside loops"}[info.region]
  return f"{where}: {'attention matmuls' if info.batched else 'matmuls' if info.matmul else 'other ops'}"


def profile_split(fn: Callable[[], Any], hlo_texts: Sequence[str]) -> dict[str, Any]:
  """Runs fn() under the JAX profiler and splits its wall time over `category`s of the ops that ran.

  Ops of one program may run concurrently on the thread pool: every instant is shared equally among the ops
  running then, so the categories' seconds add up to the time any op ran ("busy"); the rest of the wall time is
  host work (Python, transfers) or waiting. Returns {"error": ...} if the profiler is unavailable."""
  table = hlo_op_table(hlo_texts)
  with tempfile.TemporaryDirectory() as folder:
    try:
      jax.profiler.start_trace(folder, create_perfetto_trace=True)
    except Exception as e:  # a profiler already running, or none built in
      return {"error": repr(e)}
    try:
      wall, cpu = _clock(fn)
    finally:
      jax.profiler.stop_trace()
    files = sorted(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True))
    if not files:
      return {"error": "the profiler wrote no perfetto trace"}
    with gzip.open(files[-1]) as f:
      events = json.load(f)["traceEvents"]
  spans = [(e["ts"], e["ts"] + e["dur"], category(table[e["name"]])) for e in events
           if e.get("ph") == "X" and e.get("name") in table and e.get("dur", 0) > 0]
  bounds = sorted({t for s in spans for t in s[:2]})
  seconds: dict[str, float] = {}
  # Sweep: between consecutive boundaries, the time is split equally among the spans covering it.
  starts = sorted(spans)
  active: list[tuple[float, str]] = []
  j = 0
  for lo, hi in zip(bounds, bounds[1:]):
    while j < len(starts) and starts[j][0] <= lo:
      active.append((starts[j][1], starts[j][2]))
      j += 1
    active = [a for a in active if a[0] > lo]
    if active:
      share = (hi - lo) / 1e6 / len(active)
      for _, cat in active:
        seconds[cat] = seconds.get(cat, 0.0) + share
  busy = sum(seconds.values())
  return {"wall_seconds": wall, "cpu_seconds": cpu, "busy_seconds": busy, "ops_traced": len(spans),
          "seconds": dict(sorted(seconds.items())),
          "share_of_wall": {k: v / wall for k, v in sorted(seconds.items())}, "share_idle": max(0.0, 1 - busy / wall)}


# --------------------------------------------------------------------------------------------- activation pass

def activation_xla_flops(params, config: GemmaConfig, layer: int, batch_size: int, width: int) -> dict[str, float]:
  """XLA's cost (scans unrolled) of one `layer_activations` batch [batch_size, width] (abstract shapes)."""

  def fresh(p, tokens, mask):  # a new function: no trace cached from the rolled program is reused
    return activations.residual_stream(p, config, tokens, mask, layer)

  with compiled_cost._unrolled_scans():
    compiled = jax.jit(fresh).lower(_abstract(params), S((batch_size, width), jnp.int32),
                                    S((batch_size, width), jnp.bool_)).compile(COST_COMPILE_OPTIONS)
  return compiled_cost._cost(compiled)


def activation_pass(params, config: GemmaConfig, tokens: np.ndarray, mask: np.ndarray, layer: int, *,
                    batch_size: int = 16, width_multiple: int = activations.WIDTH_MULTIPLE, repeats: int = 1,
                    xla_cost: bool = True, profile_ops: bool = True, log: Log = lambda _: None) -> dict[str, Any]:
  """Times `layer_activations` over every row (after compiling each batch shape) and counts its FLOPs. With
  `profile_ops`, one batch of each width runs again under the profiler first (`profile_split`).

  Returns the figures and, under "acts", the activations themselves (for the training step).
  """
  lengths = mask.sum(axis=1).astype(np.int64)
  batches = activation_batches(lengths, tokens.shape[1], batch_size, width_multiple)
  widths = sorted({w for _, w in batches})
  log(f"activation pass: {len(tokens)} rows, {len(batches)} batches of {batch_size}, widths {widths}; compiling")
  start = time.perf_counter()
  for w in widths:  # warm-up: one batch of each width through layer_activations itself compiles every shape
    rows = next(r for r, width in batches if width == w)
    layer_activations(params, config, tokens[rows], mask[rows], layer, batch_size, width_multiple)
  compile_seconds = time.perf_counter() - start
  profile = None
  if profile_ops:  # the same one batch per width again, under the profiler
    hlo = [activations.residual.lower(params, config, jnp.zeros((batch_size, w), tokens.dtype),
                                       jnp.ones((batch_size, w), mask.dtype), layer).compile().as_text()
           for w in widths]  # the programs just compiled (cached: nothing compiles again)
    first = [next(r for r, width in batches if width == w) for w in widths]
    profile = profile_split(lambda: [layer_activations(params, config, tokens[r], mask[r], layer, batch_size,
                                                       width_multiple) for r in first], hlo)
    if "seconds" in profile:
      flops = {"matmul": 0.0, "attention": 0.0}
      for r, w in zip(first, widths):
        part = layers_flops(config, range(layer + 1), lengths[r], width=w)
        flops = {k: flops[k] + part[k] for k in flops}
      profile["executed_flops"] = flops
      sec = profile["seconds"]
      profile["gflops_in_matmuls"] = flops["matmul"] / max(sec.get("layers: matmuls", 0.0), 1e-9) / 1e9
      profile["gflops_in_attention_matmuls"] = flops["attention"] / max(sec.get("layers: attention matmuls", 0.0),
                                                                       1e-9) / 1e9
      log("  profile (one batch per width): " + ", ".join(f"{k} {v:.0%}" for k, v in profile["share_of_wall"].items())
          + f", idle {profile['share_idle']:.0%}")
  acts = None
  walls, cpus = [], []
  for i in range(repeats):
    result = {}

    def run():
      result["acts"] = layer_activations(params, config, tokens, mask, layer, batch_size, width_multiple)

    wall, cpu = _clock(run)
    walls.append(wall)
    cpus.append(cpu)
    acts = result["acts"]
    log(f"  activation pass {i + 1}/{repeats}: {wall:.1f}s (CPU share {cpu / (wall * cores()):.0%})")
  layers = range(layer + 1)
  useful = layers_flops(config, layers, lengths)
  executed: dict[str, float] = {"matmul": 0.0, "attention": 0.0}
  no_copies = exact = 0.0  # the same batches without the partial batch's copies; and each only max length + 1 wide
  for rows, w in batches:
    part = layers_flops(config, layers, lengths[rows], width=w)
    executed = {k: executed[k] + part[k] for k in executed}
    real = np.unique(rows)  # a batch's rows are distinct but for the partial batch's filler copies
    no_copies += _total(layers_flops(config, layers, lengths[real], width=w))
    tight = min(tokens.shape[1], int(lengths[real].max()) + 1)
    exact += _total(layers_flops(config, layers, lengths[real], width=tight))
  out = {
      "rows": len(tokens), "layer": layer, "batch_size": batch_size, "width_multiple": width_multiple,
      "batch_widths": [w for _, w in batches], "real_tokens": int(lengths.sum()),
      "padded_tokens": int(sum(batch_size * w for _, w in batches)),
      "length_percentiles": np.percentile(lengths, [0, 25, 50, 75, 100]).tolist(),
      "compile_seconds": compile_seconds, **_summary(walls, cpus),
      "useful_flops": {**useful, "total": _total(useful)},
      "executed_flops_analytic": {**executed, "total": _total(executed)},
      "executed_over_useful_analytic": {"as_run": _total(executed) / _total(useful),
                                        "without_filler_copies": no_copies / _total(useful),
                                        "and_exact_widths": exact / _total(useful)},
  }
  if profile is not None:
    out["profile"] = profile
  if xla_cost:
    start = time.perf_counter()
    per_width = {w: activation_xla_flops(params, config, layer, batch_size, w) for w in widths}
    out["xla_cost_per_width"] = {str(w): c for w, c in per_width.items()}
    out["executed_flops_xla"] = float(sum(per_width[w]["flops"] for _, w in batches))
    out["xla_bytes_accessed"] = float(sum(per_width[w]["bytes_accessed"] for _, w in batches))
    log(f"  XLA cost (scans unrolled) of {len(widths)} batch shapes in {time.perf_counter() - start:.0f}s")
  out["acts"] = acts
  return out


# ---------------------------------------------------------------------------------------- ReFT-r1 training step

@dataclasses.dataclass
class ReftSetup:
  """One ReFT-r1 joint step for `concepts` concepts, built as `fit._train` builds it."""

  concepts: int
  cfg: OptimConfig
  loss: objectives.ReftR1Objective
  remat: bool
  compiled: Any
  memory: dict[str, int]
  params: Any
  opt_state: Any
  examples: dict[str, jax.Array]
  batches: list[StepBatch]
  length: int  # T of the example rows (every row is padded to the example set's width)
  packed_width: int  # packed output positions per concept per step
  output_rows: int  # the rows pooled across concepts that reach the output layer (UpperModel.output_rows)
  batch_size: int


def reft_setup(model_params, config: GemmaConfig, ex, acts: np.ndarray, layer: int, concepts: int, seed: int = 0,
               memory_limit: int | None = None) -> ReftSetup:
  """The step for the first `concepts` concepts of `ex` (an LMExamples of lm_all rows; `acts` its layer-`layer`
  activations): AxBench's hyperparameters, one epoch of fit's minibatches and packed loss positions, and the
  compiled step `train_jointly` would run (the upper layers kept for the backward pass if the step fits
  `memory_limit`, default `memory_budget()`, else recomputed)."""
  hp = hyperparameters(method("ReFT-r1"), config)
  arrays = {"acts": acts, "mask": ex.attention_mask, "tokens": ex.tokens,
            "position_mask": ex.intervention_mask.astype(np.float32),
            "pad_acts": acts[np.arange(len(acts)), ex.attention_mask.sum(axis=1)]}
  index, row_valid, concept_ids = ex.index[:concepts], ex.row_valid[:concepts], ex.concept_ids[:concepts]
  per_epoch = batching.steps_per_epoch(row_valid, hp["batch_size"])
  cfg = OptimConfig(lr=hp["lr"], total_steps=hp["n_epochs"] * per_epoch, weight_decay=hp["weight_decay"],
                    clip_norm=1.0, unit_norm_key="w")
  steps_rows = [(np.take_along_axis(index, b.positions, axis=1), b.weight)
                for b in batching.minibatches(row_valid, hp["batch_size"], 1, seed, concept_ids)]
  width = batching.packed_width(ex.loss_mask, steps_rows)
  batches = [StepBatch(rows, weight, dict(zip(("loss_index", "loss_valid"), batching.packed_loss_positions(
      ex.loss_mask, rows, weight, width)))) for rows, weight in steps_rows]
  pooled = batching.pooled_rows([b.extra["loss_valid"] for b in batches], concepts, 1)
  losses = [objectives.ReftR1Objective(objectives.UpperModel(config, layer, remat, pooled, vocab_chunk=chunk),
                                       hp["topk"], hp["coeff_latent_l1_loss"],
                                       pad_in_topk=hp["topk_candidates"] == "axbench")
            for remat, chunk in objectives.MEMORY_LADDER]
  params = {"w": jnp.full((concepts, config.hidden_size), 0.01, jnp.float32)}
  opt_state = init_state(cfg, params)
  examples = {k: jnp.asarray(v) for k, v in arrays.items()}
  budget = memory_budget() if memory_limit is None else memory_limit
  for loss in losses:  # as train_jointly's _fitting_step: the fastest that fits, else the last
    compiled = compile_step(cfg, loss, params, opt_state, examples, batches[0], model_params)
    m = compiled.memory_analysis()
    if m.temp_size_in_bytes + m.output_size_in_bytes <= budget or loss is losses[-1]:
      break
  return ReftSetup(concepts, cfg, loss, loss.upper.remat, compiled, compiled_cost._memory(compiled), params,
                   opt_state, examples, batches, ex.tokens.shape[1], width, pooled, hp["batch_size"])


def _step_args(setup: ReftSetup, batch: StepBatch, step: int):
  return (jnp.asarray(batch.rows), jnp.asarray(batch.weight, jnp.float32),
          {k: jnp.asarray(v) for k, v in batch.extra.items()}, step)


def reft_step_flops(config: GemmaConfig, layer: int, lengths: np.ndarray, batch: StepBatch, length: int,
                    remat: bool, output_rows: int) -> dict[str, dict[str, float]]:
  """Useful and executed FLOPs of one step. `lengths` [U] real tokens of every example row.

  Useful: weighted rows' real tokens through the upper layers forward and input-gradient backward (attention
  backward = 2x its forward), the output layer (2 matmuls of [d] x [d, V] per real output token). Executed: every
  row of [C, B] at `length` tokens, the forward twice with remat, the output layer at `output_rows` pooled rows."""
  upper = range(layer + 1, config.num_layers)
  rows = np.asarray(batch.rows)
  weighted = rows[np.asarray(batch.weight, bool)]
  vocab, d = config.vocab_size, config.hidden_size
  chunk = compiled_cost._VOCAB_CHUNK
  padded_vocab = -(-vocab // chunk) * chunk

  def train(fwd: dict[str, float], passes: int) -> dict[str, float]:
    return {"layers_matmul": fwd["matmul"] * (passes + 1), "layers_attention": fwd["attention"] * (passes + 2)}

  useful = train(layers_flops(config, upper, lengths[weighted]), 1)
  useful["output_layer"] = 4.0 * float(np.sum(batch.extra["loss_valid"])) * vocab * d
  executed = train(layers_flops(config, upper, lengths[rows.reshape(-1)], width=length), 2 if remat else 1)
  executed["output_layer"] = 4.0 * output_rows * padded_vocab * d
  return {"useful": {**useful, "total": _total(useful)}, "executed": {**executed, "total": _total(executed)}}


def reft_xla_flops(setup: ReftSetup, model_params) -> dict[str, float]:
  """XLA's cost (scans unrolled: the upper layers and the vocabulary chunks) of the compiled step."""

  def fresh(*a):  # a new function: no trace cached from the rolled program is reused
    return joint_step.__wrapped__(*a)

  rows, weight, extra, _ = _step_args(setup, setup.batches[0], 0)
  args = (setup.params, setup.opt_state, setup.examples, rows, weight, extra)
  with compiled_cost._unrolled_scans():
    compiled = jax.jit(fresh, static_argnums=(0, 1)).lower(
        setup.cfg, setup.loss, *_abstract(args), S((), jnp.int32, weak_type=True),
        _abstract(model_params)).compile(COST_COMPILE_OPTIONS)
  return compiled_cost._cost(compiled)


def reft_step(model_params, config: GemmaConfig, ex, acts: np.ndarray, layer: int, concepts: int, *, steps: int = 2,
              seed: int = 0, xla_cost: bool = True, profile_ops: bool = True, memory_limit: int | None = None,
              log: Log = lambda _: None) -> dict[str, Any]:
  """Times `steps` steady-state steps (after one warm-up step) of the ReFT-r1 joint step for `concepts` concepts
  and counts their FLOPs; with `profile_ops`, one more step runs under the profiler (`profile_split`: the
  "other loop" of the step is `lm_loss`'s scan over the vocabulary chunks, i.e. the output layer)."""
  if steps < 1:
    raise ValueError(f"steps must be at least 1, not {steps}")
  start = time.perf_counter()
  setup = reft_setup(model_params, config, ex, acts, layer, concepts, seed, memory_limit)
  compile_seconds = time.perf_counter() - start
  # Step i runs the epoch's batch i (the last one again if the epoch is shorter); step 0 is the warm-up.
  batch_of = lambda i: setup.batches[min(i, len(setup.batches) - 1)]
  log(f"ReFT-r1 step, C={concepts}: remat={setup.remat}, T={setup.length}, packed width {setup.packed_width}, "
      f"{setup.output_rows} pooled output rows, "
      f"{setup.memory['temp'] / 1e9:.2f} GB temp; compiled in {compile_seconds:.0f}s; 1 warm-up + {steps} steps")
  params, opt_state = setup.params, setup.opt_state
  lengths = ex.attention_mask.sum(axis=1).astype(np.int64)
  walls, cpus, flops = [], [], []
  for i in range(steps + 1):
    batch = batch_of(i)
    args = _step_args(setup, batch, i)
    result = {}

    def run():
      result["out"] = jax.block_until_ready(setup.compiled(params, opt_state, setup.examples, *args, model_params))

    wall, cpu = _clock(run)
    params, opt_state, values = result["out"]
    if not np.all(np.isfinite(np.asarray(values["loss"]))):
      raise FloatingPointError(f"ReFT-r1 step {i} gave a non-finite loss: {np.asarray(values['loss'])}")
    if i == 0:
      log(f"  warm-up step {wall:.1f}s")
      continue
    walls.append(wall)
    cpus.append(cpu)
    flops.append(reft_step_flops(config, layer, lengths, batch, setup.length, setup.remat, setup.output_rows))
    log(f"  step {i}/{steps}: {wall:.1f}s (CPU share {cpu / (wall * cores()):.0%})")
  mean = lambda kind: {k: statistics.mean(f[kind][k] for f in flops) for k in flops[0][kind]}
  useful, executed = mean("useful"), mean("executed")
  out = {
      "concepts": concepts, "layer": layer, "batch_per_concept": setup.batch_size, "remat": setup.remat,
      "length": setup.length, "packed_width": setup.packed_width, "output_rows": setup.output_rows,
      "memory": setup.memory,
      "compile_seconds": compile_seconds, **_summary(walls, cpus),
      "useful_flops": useful, "executed_flops_analytic": executed,
      "useful_output_tokens_per_step": statistics.mean(float(np.sum(batch_of(i).extra["loss_valid"]))
                                                       for i in range(1, steps + 1)),
      "real_tokens_per_step": statistics.mean(float(lengths[np.asarray(b.rows)[np.asarray(b.weight, bool)]].sum())
                                              for b in map(batch_of, range(1, steps + 1))),
  }
  # Cross-check of the executed count with compiled_cost's analytic step (the same formula at integer shapes).
  shape = compiled_cost.StepShape(config, layer, setup.batch_size, setup.length,
                                  setup.output_rows / (concepts * setup.batch_size), model_params["embed"].dtype)
  out["executed_flops_compiled_cost_analytic"] = compiled_cost.analytic_flops(shape, concepts, setup.remat)
  if xla_cost:
    start = time.perf_counter()
    cost = reft_xla_flops(setup, model_params)
    out["executed_flops_xla"], out["xla_bytes_accessed"] = cost["flops"], cost["bytes_accessed"]
    log(f"  XLA cost (scans unrolled) in {time.perf_counter() - start:.0f}s")
  if profile_ops:
    i = steps + 1
    batch = batch_of(i)
    args = _step_args(setup, batch, i)
    profile = profile_split(lambda: jax.block_until_ready(
        setup.compiled(params, opt_state, setup.examples, *args, model_params)), [setup.compiled.as_text()])
    if "seconds" in profile:
      flops = reft_step_flops(config, layer, lengths, batch, setup.length, setup.remat, setup.output_rows)[
          "executed"]
      sec = profile["seconds"]
      profile["executed_flops"] = flops
      profile["gflops_in_layer_matmuls"] = flops["layers_matmul"] / max(sec.get("layers: matmuls", 0.0), 1e-9) / 1e9
      profile["gflops_in_output_layer_matmuls"] = flops["output_layer"] / max(
          sec.get("other loop: matmuls", 0.0), 1e-9) / 1e9
      log("  profile (one step): " + ", ".join(f"{k} {v:.0%}" for k, v in profile["share_of_wall"].items())
          + f", idle {profile['share_idle']:.0%}")
    out["profile"] = profile
  return out


# --------------------------------------------------------------------------------------------- steered decoding

def left_padded_prompts(batch: int, width: int, vocab_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Random prompts of width//2..width tokens (ids from 1000 up), left-padded with id 0: ids, mask [batch, width]."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(max(1, width // 2), width + 1, size=batch)
  ids = rng.integers(1000, vocab_size, size=(batch, width), dtype=np.int32)
  mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
  return np.where(mask, ids, 0).astype(np.int32), mask


def decode_flops(config: GemmaConfig, prompt_lengths: np.ndarray, width: int, new_tokens: int) -> dict[str, Any]:
  """FLOPs of `generate_tokens` for left-padded prompts of real `prompt_lengths` in `width` slots.

  The prefill runs every prompt slot through all layers (attending over all width + new cache slots, masked) and
  the unembedding at the last position; then each of the `new_tokens` loop steps samples a token and runs it
  through the model (the last step's forward is not used). Useful: real prompt tokens and keys, the first
  new_tokens - 1 steps' forwards, each over its real keys."""
  c = config
  every = range(c.num_layers)
  q, vd = c.num_heads * c.head_dim, c.vocab_size * c.hidden_size
  w = 2.0 * layer_weights(c) * c.num_layers
  slots = width + new_tokens
  batch = len(prompt_lengths)
  useful_prefill = _total(layers_flops(c, every, prompt_lengths)) + 2.0 * vd * batch
  useful_steps = 0.0
  for n in prompt_lengths:
    for s in range(new_tokens - 1):
      keys = sum(min(int(n) + s + 1, win) if win else int(n) + s + 1 for win in _windows(c, every))
      useful_steps += w + 4.0 * q * keys + 2.0 * vd
  executed_prefill = batch * width * w + 4.0 * q * c.num_layers * batch * width * slots + 2.0 * vd * batch
  executed_step = batch * (w + 4.0 * q * c.num_layers * slots + 2.0 * vd)
  return {"useful": useful_prefill + useful_steps, "useful_prefill": useful_prefill, "useful_steps": useful_steps,
          "executed": executed_prefill + new_tokens * executed_step, "executed_prefill": executed_prefill,
          "executed_per_step": executed_step}


def decode_step_bytes(config: GemmaConfig, batch: int, slots: int, itemsize: int) -> dict[str, float]:
  """Bytes one decoding step must move at least: every layer's matmul weights and the unembedding table once,
  the KV cache read once, the float32 logits [batch, V] written and read once by the sampler."""
  c = config
  weights = (layer_weights(c) * c.num_layers + c.vocab_size * c.hidden_size) * itemsize
  cache = 2.0 * c.num_layers * batch * slots * c.num_kv_heads * c.head_dim * itemsize
  logits = 2.0 * batch * c.vocab_size * 4
  return {"weights": float(weights), "kv_cache": cache, "logits": logits, "total": weights + cache + logits}


def steered_decode(params, config: GemmaConfig, layer: int, *, batch: int = 64, prompt_length: int = 32,
                   new_tokens: int = 32, repeats: int = 1, seed: int = 0, log: Log = lambda _: None) -> dict[str, Any]:
  """Times `generate_tokens` with a per-row steering vector after `layer` (the steer pipeline's way: every row its
  own unit vector and strength at every prompt and generated position, sampled at temperature 1)."""
  ids, mask = left_padded_prompts(batch, prompt_length, config.vocab_size, seed)
  rng = np.random.default_rng(seed)
  vectors = rng.normal(size=(batch, config.hidden_size)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  iv_params = steering_params(vectors, rng.uniform(0.0, 50.0, size=batch).astype(np.float32))
  keys = jax.random.split(jax.random.key(seed), batch)
  sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0)

  def run():
    out = generate_tokens(params, config, ids, mask, keys, sampling, (), 0, steering(layer), iv_params)
    jax.block_until_ready(out.tokens)

  log(f"steered decoding: batch {batch}, prompts {prompt_length} wide, {new_tokens} new tokens, layer {layer}")
  warm, _ = _clock(run)
  log(f"  warm-up (compile) {warm:.1f}s")
  walls, cpus = zip(*[_clock(run) for _ in range(repeats)])
  log(f"  timed: {', '.join(f'{w:.1f}s' for w in walls)}")
  flops = decode_flops(config, mask.sum(axis=1), prompt_length, new_tokens)
  # The unembedding alone at this batch: a [batch, d] x [d, V] matmul, the largest of every decoding step.
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((batch, config.hidden_size)).astype(params["embed"].dtype))
  unembed = jax.jit(lambda a, table: a @ table.T)
  jax.block_until_ready(unembed(x, params["embed"]))
  unembed_seconds = min(_clock(lambda: jax.block_until_ready(unembed(x, params["embed"])))[0] for _ in range(3))
  itemsize = jnp.dtype(params["embed"].dtype).itemsize
  step_bytes = decode_step_bytes(config, batch, prompt_length + new_tokens, itemsize)
  return {"batch": batch, "prompt_length": prompt_length, "new_tokens": new_tokens, "layer": layer,
          "warmup_seconds": warm, **_summary(walls, cpus), "flops": flops, "step_bytes": step_bytes,
          "unembedding_matmul_gflops": 2.0 * batch * config.hidden_size * config.vocab_size / unembed_seconds / 1e9,
          "step_arithmetic_intensity": flops["executed_per_step"] / step_bytes["total"]}


# ------------------------------------------------------------------------------------------------------ the run

def _ratios(result: dict[str, Any], useful: float, executed: float | None, before: dict, after: dict) -> None:
  """Adds the interleaved peak and the achieved rates (median seconds; best seconds too) to `result`."""
  peak = (before["gflops"] + after["gflops"]) / 2
  result["peak_gflops"] = {"before": before["gflops"], "after": after["gflops"], "mean": peak}
  result["useful_gflops"] = useful / result["median_seconds"] / 1e9
  result["useful_gflops_best"] = useful / result["best_seconds"] / 1e9
  result["ratio_to_peak"] = result["useful_gflops"] / peak
  if executed is not None:
    result["executed_gflops"] = executed / result["median_seconds"] / 1e9
    result["executed_ratio_to_peak"] = result["executed_gflops"] / peak
    result["executed_over_useful"] = executed / useful
  # Per CPU-second: what the process achieved for the core time it got, against the peak probes' own figure.
  peak_cpu = statistics.mean(p["gflops_per_cpu_second"] for p in (before, after))
  result["useful_gflops_per_cpu_second"] = useful / statistics.median(result["cpu_seconds"]) / 1e9
  result["ratio_to_peak_per_cpu_second"] = result["useful_gflops_per_cpu_second"] / peak_cpu


def run(model, data, *, layer: int = 12, concepts: Sequence[int] = (2,), max_examples: int | None = None,
        activation_repeats: int = 1, train_steps: int = 2, decode_batch: int = 64, prompt_length: int = 32,
        new_tokens: int = 32, steer_layer: int = 12, decode_repeats: int = 1, peak_repeats: int = 3,
        xla_cost: bool = True, profile_ops: bool = True, seed: int = 0, log: Log = lambda _: None) -> dict[str, Any]:
  """The whole measurement: peak probe, activation pass, probe, one training step per C (each followed by a
  probe), steered decoding, probe; then the read bandwidth.

  The activation pass runs over the lm_all rows of the first max(concepts) concepts of `data` (at most
  `max_examples` per concept), exactly the rows `fit` would run for them; the training steps use its activations.
  """
  from axjax.data.examples import lm_examples

  config, params = model.config, model.params
  probes = []

  def probe(label: str) -> dict[str, Any]:
    p = matmul_peak(repeats=peak_repeats)
    p["after"] = label
    probes.append(p)
    log(f"matmul peak ({label}): {p['gflops']:.1f} GFLOP/s at {p['shape']} (CPU share {p['cpu_share']:.0%}); "
        + ", ".join(f"{s['m']}x{s['k']}x{s['n']} {s['gflops']:.0f}" for s in p["per_shape"]))
    return p

  results: dict[str, Any] = {"cores": cores(), "peak_shapes": [list(s) for s in PEAK_SHAPES],
                             "load_average_at_start": os.getloadavg()}
  before = probe("start")
  ids = [int(c.concept_id) for c in data.concepts[:max(concepts)]]
  ex = lm_examples(data, model.tokenizer, concept_ids=ids, train_on_negative=True, positions="all",
                   max_examples=max_examples)
  act = activation_pass(params, config, ex.tokens, ex.attention_mask, layer, xla_cost=xla_cost,
                        repeats=activation_repeats, profile_ops=profile_ops, log=log)
  acts = act.pop("acts")
  after = probe("activation pass")
  _ratios(act, act["useful_flops"]["total"], act.get("executed_flops_xla"), before, after)
  act["concept_ids"] = ids
  results["activation_pass"] = act
  results["train"] = []
  for c in concepts:
    before = after
    step = reft_step(params, config, ex, acts, layer, c, steps=train_steps, seed=seed, xla_cost=xla_cost,
                     profile_ops=profile_ops, log=log)
    after = probe(f"ReFT-r1 step C={c}")
    _ratios(step, step["useful_flops"]["total"], step.get("executed_flops_xla"), before, after)
    results["train"].append(step)
  del acts
  before = after
  dec = steered_decode(params, config, steer_layer, batch=decode_batch, prompt_length=prompt_length,
                       new_tokens=new_tokens, repeats=decode_repeats, seed=seed, log=log)
  after = probe("steered decoding")
  _ratios(dec, dec["flops"]["useful"], dec["flops"]["executed"], before, after)
  results["decode"] = dec
  bandwidth = read_bandwidth()
  results["read_bandwidth"] = bandwidth
  decode_roofline(dec, dec["peak_gflops"]["mean"] * 1e9, bandwidth["gbytes_per_s"] * 1e9)
  results["peak_probes"] = probes
  results["load_average_at_end"] = os.getloadavg()
  return results


def decode_roofline(dec: dict[str, Any], peak_flops: float, bandwidth: float) -> None:
  """Adds to a `steered_decode` result the machine balance (peak FLOP/s / bytes/s) and which bound a step hits."""
  dec["machine_balance_flops_per_byte"] = peak_flops / bandwidth
  dec["bound_on_this_machine"] = ("compute" if dec["step_arithmetic_intensity"] >= dec["machine_balance_flops_per_byte"]
                                  else "memory")
  dec["step_roofline_seconds"] = {"flops": dec["flops"]["executed_per_step"] / peak_flops,
                                  "bytes": dec["step_bytes"]["total"] / bandwidth}
  dec["measured_seconds_per_step"] = dec["median_seconds"] / dec["new_tokens"]  # prefill included


def _shares(profile: dict[str, Any]) -> str:
  if "share_of_wall" not in profile:
    return f"profile unavailable ({profile.get('error')})"
  return (", ".join(f"{k} {v:.0%}" for k, v in profile["share_of_wall"].items())
          + f", idle/host {profile['share_idle']:.0%}")


def _profile_lines(profile: dict[str, Any], what: str, matmuls: list[tuple[str, str]]) -> list[str]:
  """A profiled workload's time shares, then the GFLOP/s inside its kinds of matmul ((label, key) pairs)."""
  lines = [f"  time ({what}): " + _shares(profile)]
  if matmuls[0][1] in profile:
    lines.append("  " + ", ".join(f"inside {label} {profile[key]:.0f} GFLOP/s" for label, key in matmuls))
  return lines


def format_table(r: dict[str, Any]) -> str:
  """The run as plain text: one line per workload, ratios to the interleaved peak first, then the diagnosis."""
  lines = [f"gflops: achieved GFLOP/s (useful FLOPs / median wall time) against the float32 matmul peak measured "
           f"before and after each workload; {r['cores']} cores, load average at start "
           f"{r['load_average_at_start'][0]:.1f}, at end {r['load_average_at_end'][0]:.1f}"]
  head = ("workload", "ratio to peak", "useful GFLOP/s", "peak GFLOP/s", "executed/useful", "executed GFLOP/s",
          "seconds", "CPU share", "ratio per CPU-s")
  rows = [head]

  def row(name, w):
    rows.append((name, f"{w['ratio_to_peak']:.0%}", f"{w['useful_gflops']:.1f}", f"{w['peak_gflops']['mean']:.1f}",
                 f"{w['executed_over_useful']:.2f}" if "executed_over_useful" in w else "-",
                 f"{w['executed_gflops']:.1f}" if "executed_gflops" in w else "-", f"{w['median_seconds']:.1f}",
                 f"{w['cpu_share']:.0%}", f"{w['ratio_to_peak_per_cpu_second']:.0%}"))

  a = r["activation_pass"]
  row(f"activation pass, {a['rows']} rows to layer {a['layer']}", a)
  for t in r["train"]:
    row(f"ReFT-r1 step C={t['concepts']} (remat={t['remat']})", t)
  d = r["decode"]
  row(f"steered decoding b{d['batch']}, {d['prompt_length']}+{d['new_tokens']}", d)
  widths = [max(len(x[i]) for x in rows) for i in range(len(head))]
  lines += ["  ".join(cell.ljust(w) for cell, w in zip(x, widths)) for x in rows]
  pad = a["executed_over_useful_analytic"]
  lines.append(f"activation pass: executed/useful {pad['as_run']:.2f} analytic (real tokens {a['real_tokens']}, padded "
               f"{a['padded_tokens']}; {pad['without_filler_copies']:.2f} without the partial batch's filler copies, "
               f"{pad['and_exact_widths']:.2f} also with exact widths, not bucketed); attention "
               f"{a['useful_flops']['attention'] / a['useful_flops']['total']:.0%} of the useful FLOPs")
  if "profile" in a:
    lines += _profile_lines(a["profile"], "one batch per width, profiled",
                            [("the layers' projection matmuls", "gflops_in_matmuls"),
                             ("attention matmuls", "gflops_in_attention_matmuls")])
  for t in r["train"]:
    u = t["useful_flops"]
    row_positions = t["concepts"] * t["batch_per_concept"] * t["length"]
    lines.append(f"ReFT-r1 C={t['concepts']}, T={t['length']}: useful FLOPs {u['output_layer'] / u['total']:.0%} "
                 f"output layer, {(u['layers_matmul'] + u['layers_attention']) / u['total']:.0%} upper layers; "
                 f"executed/useful {t['executed_flops_analytic']['total'] / u['total']:.2f} analytic: "
                 f"{t['useful_output_tokens_per_step'] / t['output_rows']:.0%} of the pooled output "
                 f"rows are real output tokens, {t['real_tokens_per_step'] / row_positions:.0%} of the upper "
                 "layers' row positions are real tokens")
    if "profile" in t:
      lines += _profile_lines(t["profile"], "one step, profiled; 'other loop' = the output layer's vocabulary scan",
                              [("the upper layers' matmuls", "gflops_in_layer_matmuls"),
                               ("the output layer's matmuls", "gflops_in_output_layer_matmuls")])
  lines.append(f"steered decoding: per step {d['step_bytes']['total'] / 1e9:.2f} GB (weights "
               f"{d['step_bytes']['weights'] / 1e9:.2f}, KV cache {d['step_bytes']['kv_cache'] / 1e9:.2f}, logits "
               f"{d['step_bytes']['logits'] / 1e9:.2f}) and {d['flops']['executed_per_step'] / 1e9:.1f} GFLOP = "
               f"{d['step_arithmetic_intensity']:.0f} FLOP/B; read bandwidth {r['read_bandwidth']['gbytes_per_s']:.1f} "
               f"GB/s, machine balance {d['machine_balance_flops_per_byte']:.1f} FLOP/B: {d['bound_on_this_machine']}"
               f"-bound here (roofline per step: FLOPs {d['step_roofline_seconds']['flops']:.3f}s, bytes "
               f"{d['step_roofline_seconds']['bytes']:.3f}s; measured {d['measured_seconds_per_step']:.3f}s per new "
               f"token, prefill included); the [{d['batch']}, d] x [d, V] unembedding alone runs at "
               f"{d['unembedding_matmul_gflops']:.0f} GFLOP/s")
  return "\n".join(lines)
