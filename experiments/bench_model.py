"""Speed and memory of axjax next to transformers (PyTorch), measured side by side in one run.

  python -m experiments.bench_model [--suite=forward,decode,load_memory] [--model=gemma-3-270m]

Suites:
  forward      forward tokens/s (logits included) of axjax vs transformers on one batch of token ids.
  decode       greedy decode tokens/s: axjax `generate_tokens` vs transformers `generate`, left-padded prompts.
  load_memory  peak host memory of `axjax.load` on a random bfloat16 HF checkpoint, in a fresh process.
  steer        steered sampling throughput (rows/s, tokens/s): axjax's per-row-intervention batches vs
               transformers `generate` with a forward hook at layer L, batch 10 (AxBench's steering way).
  train        ReFT-r1 training concepts/hour: axjax jointly over concepts, axjax one concept at a time, and a
               PyTorch + transformers reference trained the AxBench way (hook at layer L, one concept, batch 6).
  predict      PREDICTED cost of the ReFT-r1 joint step at a preset's shape (default Gemma-2-2B, bf16, layer 20)
               for C concepts, from XLA's compiled cost and memory analyses on abstract shapes (nothing runs):
               FLOPs, bytes, arithmetic intensity, roofline step time, the concept chunk that fits --predict_memory_gb.
               Only run when named in --suite.
  gflops       achieved GFLOP/s of the activation pass, the ReFT-r1 joint step and steered decoding, each as a ratio
               to the float32 matmul peak measured before and after it in the same run (axjax alone, no
               transformers); useful vs executed FLOPs (XLA cost analysis, scans unrolled) and a profiler split of
               the time. Only run when named in --suite.

`--model=random:<preset>` (e.g. random:gemma-2-2b) benchmarks random weights of an `axjax.PRESETS` shape on both
sides, for machines with an accelerator:
  python -m experiments.bench_model --suite=decode --model=random:gemma-2-2b --dtype=bfloat16 \\
      --decode_batch_sizes=256 --reference_batch_size=10
Timed runs of the two implementations alternate, so a noisy machine slows both alike; the ratios are the result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from typing import Any

from absl import flags

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import axjax  # noqa: E402
from axjax.benchmarks.side_by_side import time_alternating, torch_reference  # noqa: E402
from axjax.benchmarks import load_memory  # noqa: E402
from axjax.generation.decode import generate_tokens  # noqa: E402
from axjax.generation.sampling import SamplingConfig  # noqa: E402
from axjax.loading.load import DTYPES  # noqa: E402
from experiments import cli  # noqa: E402

SUITES = ("forward", "decode", "load_memory", "train", "steer", "predict", "gflops")
RANDOM_PREFIX = "random:"

FLAGS = flags.FLAGS
flags.DEFINE_list("suite", list(SUITES[:-2]), f"Benchmarks to run, a comma list of: {', '.join(SUITES)} "
                  "(all but predict and gflops by default).")
flags.DEFINE_string("model", axjax.EMBEDDED_MODEL,
                    "Model for forward/decode: an `axjax.load` source (the embedded gemma-3-270m, a .gguf file "
                    f"or an HF checkpoint folder) or '{RANDOM_PREFIX}<preset>' for random weights of an "
                    "axjax.PRESETS shape.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype on both sides.")
flags.DEFINE_integer("forward_batch", 4, "Rows of the forward batch.")
flags.DEFINE_integer("forward_length", 128, "Tokens per row of the forward batch.")
flags.DEFINE_list("decode_batch_sizes", ["1", "8", "10"], "axjax decode batch sizes (10 is AxBench's steering "
                  "batch).")
flags.DEFINE_integer("reference_batch_size", None, "transformers decode batch size; by default the same as "
                     "each axjax batch size.")
flags.DEFINE_integer("new_tokens", 32, "Tokens generated per row (both sides generate exactly this many).")
flags.DEFINE_integer("prompt_length", 32, "Width of the left-padded prompts; rows hold between half of it and "
                     "all of it.")
flags.DEFINE_integer("repeats", 5, "Timed runs per implementation, after one warm-up run each.")
flags.DEFINE_enum("checkpoint_preset", "gemma-2-2b", list(axjax.PRESETS), "Shape of the load_memory checkpoint.")
flags.DEFINE_string("scratch_dir", "/tmp/axjax_bench", "Where the load_memory checkpoint is written (once).")
flags.DEFINE_string("output", "bench_out/bench_model.json", "JSON file the results are written to.")
flags.DEFINE_integer("seed", 0, "Seed of the token ids and random weights.")
flags.DEFINE_string("train_data", "concept10/prod_2b_l20_v1", "AxBench dataset the train suite draws concepts from.")
flags.DEFINE_integer("train_concepts", 2, "Concepts trained by each side in the train suite.")
flags.DEFINE_integer("train_examples", 12, "Examples per concept (half positive, half negative; AxBench: 144).")
flags.DEFINE_integer("train_epochs", 1, "Epochs (AxBench: 3).")
flags.DEFINE_integer("train_layer", 12, "Layer whose output ReFT-r1 edits.")
flags.DEFINE_integer("train_repeats", 1, "Timed runs per way of training, after one warm-up each.")
flags.DEFINE_integer("steer_rows", 64, "Steering rows (concept x factor x instruction) each side generates.")
flags.DEFINE_integer("steer_batch", 64, "axjax rows per compiled steering batch (the reference uses 10).")
flags.DEFINE_integer("steer_layer", 12, "Layer after which each row's vector is added.")
flags.DEFINE_integer("steer_repeats", 2, "Timed runs per implementation in the steer suite, after one warm-up.")
flags.DEFINE_float("peak_tflops", None, "Accelerator peak TFLOP/s for the model-FLOP utilisation of the joint run "
                   "(e.g. 989 for an H100's dense bf16); without it no utilisation is reported.")
flags.DEFINE_enum("predict_preset", "gemma-2-2b", list(axjax.PRESETS), "Shape of the predict suite's model.")
flags.DEFINE_enum("predict_dtype", "bfloat16", ["float32", "bfloat16"], "Predict: parameter and activation dtype.")
flags.DEFINE_integer("predict_layer", 20, "Predict: layer whose output ReFT-r1 edits.")
flags.DEFINE_list("predict_concepts", ["1", "16", "64"], "Predict: concept counts C compiled (at least two for the "
                  "memory fit).")
flags.DEFINE_list("predict_remat", ["true", "false"], "Predict: UpperModel.remat settings compiled.")
flags.DEFINE_integer("predict_batch", 6, "Predict: rows per concept per step (AxBench's 2B batch).")
flags.DEFINE_integer("predict_length", 256, "Predict: tokens per row (AxBench's 2B examples are ~150-300).")
flags.DEFINE_integer("predict_loss_positions", 128, "Predict: output tokens per row reaching the LM loss.")
flags.DEFINE_integer("predict_examples", 144, "Predict: examples per concept (Concept500: 144), for the steps per "
                     "concept and the activation-cache bytes.")
flags.DEFINE_float("predict_peak_tflops", 989.0, "Predict: peak TFLOP/s of the roofline (H100 SXM dense bf16).")
flags.DEFINE_float("predict_bandwidth_tbps", 3.35, "Predict: memory bandwidth TB/s of the roofline (H100 SXM).")
flags.DEFINE_float("predict_memory_gb", 80.0, "Predict: device memory budget in GB (1e9 bytes) for the chunk size.")
flags.DEFINE_list("gflops_concepts", ["2"], "gflops: concept counts C of the ReFT-r1 step (the first C concepts of "
                  "--train_data); the activation pass covers the lm_all rows of the first max(C).")
flags.DEFINE_integer("gflops_max_examples", None, "gflops: examples per concept (default all: Concept10 has 144).")
flags.DEFINE_integer("gflops_layer", 12, "gflops: layer of the activation pass and of the ReFT-r1 intervention.")
flags.DEFINE_integer("gflops_train_steps", 2, "gflops: timed ReFT-r1 steps per C, after one warm-up step.")
flags.DEFINE_integer("gflops_activation_repeats", 1, "gflops: timed activation passes, after compiling every shape.")
flags.DEFINE_integer("gflops_decode_batch", 64, "gflops: rows of the steered decoding batch (prompts --prompt_length "
                     "wide, --new_tokens sampled, steering after --steer_layer).")
flags.DEFINE_integer("gflops_peak_repeats", 3, "gflops: runs per matmul shape in each peak probe (best taken).")
flags.DEFINE_bool("gflops_xla_cost", True, "gflops: read executed FLOPs from XLA's cost analysis (scans unrolled).")
flags.DEFINE_bool("gflops_profile", True, "gflops: split the activation pass's and the step's time by op kind "
                  "(jax.profiler).")
flags.register_validator("gflops_concepts", lambda sizes: bool(sizes) and all(s.isdigit() and int(s) > 0
                                                                            for s in sizes),
                         "--gflops_concepts takes a comma list of positive integers")
flags.register_validator("suite", lambda names: set(names) <= set(SUITES),
                         f"--suite takes a comma list of: {', '.join(SUITES)}")
flags.register_validator("model", lambda m: not m.startswith(RANDOM_PREFIX) or m[len(RANDOM_PREFIX):] in axjax.PRESETS,
                         f"--model={RANDOM_PREFIX}<preset> takes one of: {', '.join(axjax.PRESETS)}")
flags.register_validator("predict_concepts", lambda sizes: all(s.isdigit() and int(s) > 0 for s in sizes),
                         "--predict_concepts takes a comma list of positive integers")
flags.register_validator("predict_remat", lambda values: set(values) <= {"true", "false"},
                         "--predict_remat takes a comma list of true, false")
flags.register_validator("decode_batch_sizes", lambda sizes: all(s.isdigit() and int(s) > 0 for s in sizes),
                         "--decode_batch_sizes takes a comma list of positive integers")


def log(message: str) -> None:
  """A progress line on stderr."""
  print(f"[bench_model] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Pair:
  """The same model twice: axjax parameters and a transformers module on `device`."""

  config: axjax.GemmaConfig
  params: Any
  reference: Any
  device: Any
  same_weights: bool  # both sides hold the same weights, so their greedy tokens should agree
  tokenizer: Any  # the model's own, or for random weights the embedded model's


def torch_device():
  """CUDA when PyTorch sees a GPU, else the CPU with one thread per available core."""
  import torch

  if torch.cuda.is_available():
    return torch.device("cuda")
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  return torch.device("cpu")


def load_pair(model: str, dtype: str) -> Pair:
  """Loads (or, for random:<preset>, initialises) the model on both sides."""
  import torch
  import transformers

  device = torch_device()
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  if model.startswith(RANDOM_PREFIX):
    from axjax.loading.load import embedded_gguf_path
    from axjax.loading.tokenizer import gguf_tokenizer

    tokenizer = gguf_tokenizer(embedded_gguf_path())  # its 262,144 ids must all be valid: widen the vocabulary
    config = axjax.PRESETS[model[len(RANDOM_PREFIX):]].replace(vocab_size=len(tokenizer))
    params = axjax.init_params(config, jax.random.key(FLAGS.seed), DTYPES[dtype])
    hf = load_memory.hf_config_dict(config)
    hf_config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
    torch.manual_seed(FLAGS.seed)
    with device:
      reference = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch_dtype)
    return Pair(config, params, reference.eval(), device, same_weights=False, tokenizer=tokenizer)
  lm = axjax.load(model, dtype=dtype)
  reference = torch_reference(lm, torch_dtype).to(device)
  return Pair(lm.config, lm.params, reference.eval(), device, same_weights=True, tokenizer=lm.tokenizer)


def random_ids(rng: np.random.Generator, shape: tuple[int, ...], vocab_size: int) -> np.ndarray:
  """Token ids that avoid the first 1000 (special and control tokens)."""
  return rng.integers(1000, vocab_size, size=shape, dtype=np.int32)


def left_padded_prompts(batch: int, width: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Random prompts of width//2..width tokens, left-padded with id 0 to `width`: ids and mask [batch, width]."""
  rng = np.random.default_rng(FLAGS.seed)
  lengths = rng.integers(max(1, width // 2), width + 1, size=batch)
  ids = random_ids(rng, (batch, width), vocab_size)
  mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
  return np.where(mask, ids, 0).astype(np.int32), mask


def sync(device) -> None:
  """Waits for queued PyTorch work on `device`."""
  import torch

  if device.type == "cuda":
    torch.cuda.synchronize()


def bench_forward(pair: Pair) -> dict[str, Any]:
  """Forward tokens/s with full logits, one batch of random ids on both sides."""
  import torch

  b, t = FLAGS.forward_batch, FLAGS.forward_length
  log(f"forward: batch {b} x {t} tokens")
  ids = random_ids(np.random.default_rng(FLAGS.seed), (b, t), pair.config.vocab_size)
  j_ids, j_mask = jnp.asarray(ids), jnp.ones((b, t), bool)
  t_ids = torch.from_numpy(ids).long().to(pair.device)
  t_mask = torch.ones_like(t_ids)

  def run_axjax():
    return jax.block_until_ready(axjax.forward(pair.params, pair.config, j_ids, j_mask).logits)

  def run_reference():
    with torch.inference_mode():
      logits = pair.reference(input_ids=t_ids, attention_mask=t_mask, use_cache=False).logits
    sync(pair.device)
    return logits

  _, seconds = time_alternating({"axjax": run_axjax, "transformers": run_reference}, FLAGS.repeats, log)
  tokens = b * t
  return {"batch": b, "length": t, "axjax_seconds": seconds["axjax"],
          "transformers_seconds": seconds["transformers"], "axjax_tokens_per_s": tokens / seconds["axjax"],
          "transformers_tokens_per_s": tokens / seconds["transformers"],
          "ratio": seconds["transformers"] / seconds["axjax"], "load_average_1m": os.getloadavg()[0]}


def bench_decode_one(pair: Pair, batch: int, reference_batch: int) -> dict[str, Any]:
  """Greedy decode tokens/s of axjax at `batch` rows vs transformers `generate` at `reference_batch` rows."""
  import torch

  new, width = FLAGS.new_tokens, FLAGS.prompt_length
  log(f"decode: axjax batch {batch}, transformers batch {reference_batch}, {width}-token prompts, {new} new")
  ids, mask = left_padded_prompts(max(batch, reference_batch), width, pair.config.vocab_size)
  j_ids, j_mask = jnp.asarray(ids[:batch]), jnp.asarray(mask[:batch])
  t_ids = torch.from_numpy(ids[:reference_batch]).long().to(pair.device)
  t_mask = torch.from_numpy(mask[:reference_batch]).long().to(pair.device)
  sampling = SamplingConfig(max_new_tokens=new, temperature=0.0)
  outputs = {}

  def run_axjax():
    out = generate_tokens(pair.params, pair.config, j_ids, j_mask, jax.random.key(0), sampling, (), 0)
    outputs["axjax"] = np.asarray(jax.block_until_ready(out.tokens))

  def run_reference():
    with torch.inference_mode():
      out = pair.reference.generate(input_ids=t_ids, attention_mask=t_mask, do_sample=False,
                                    max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    sync(pair.device)
    outputs["transformers"] = out[:, width:].cpu().numpy()

  _, seconds = time_alternating({"axjax": run_axjax, "transformers": run_reference}, FLAGS.repeats, log)
  axjax_tps = batch * new / seconds["axjax"]
  reference_tps = reference_batch * new / seconds["transformers"]
  result = {"batch": batch, "reference_batch": reference_batch, "new_tokens": new, "prompt_length": width,
            "axjax_seconds": seconds["axjax"], "transformers_seconds": seconds["transformers"],
            "axjax_tokens_per_s": axjax_tps, "transformers_tokens_per_s": reference_tps,
            "ratio": axjax_tps / reference_tps, "load_average_1m": os.getloadavg()[0]}
  if pair.same_weights:
    rows = min(batch, reference_batch)
    eos_ids = np.atleast_1d(pair.reference.generation_config.eos_token_id or [])
    result["greedy_token_agreement"] = greedy_agreement(outputs["axjax"][:rows], outputs["transformers"][:rows],
                                                        eos_ids)
  return result


def greedy_agreement(ours: np.ndarray, theirs: np.ndarray, eos_ids: np.ndarray) -> float:
  """Fraction of equal tokens before each row's first EOS from axjax (`min_new_tokens` bans EOS in transformers)."""
  before_eos = np.cumsum(np.isin(ours, eos_ids), axis=1) == 0
  return float(np.mean((ours == theirs)[before_eos]))


def bench_decode(pair: Pair) -> list[dict[str, Any]]:
  """Decode results for every `--decode_batch_sizes` entry."""
  return [bench_decode_one(pair, int(b), FLAGS.reference_batch_size or int(b)) for b in FLAGS.decode_batch_sizes]


def bench_load_memory() -> dict[str, Any]:
  """Peak host memory of loading a random bfloat16 `--checkpoint_preset` checkpoint, over its parameter bytes."""
  config = axjax.PRESETS[FLAGS.checkpoint_preset]
  folder = os.path.join(FLAGS.scratch_dir, f"{FLAGS.checkpoint_preset}-random-bf16")
  log(f"load_memory: checkpoint {folder} (written once, then reused)")
  os.makedirs(FLAGS.scratch_dir, exist_ok=True)
  load_memory.write_checkpoint(folder, config, seed=FLAGS.seed)
  log("load_memory: axjax.load in a fresh process")
  result = load_memory.measure(folder, "bfloat16")
  extra = result["peak_rss_bytes"] - result["baseline_rss_bytes"]
  return {"checkpoint": folder, "preset": FLAGS.checkpoint_preset, **result, "peak_over_baseline_bytes": extra,
          "peak_ratio": extra / result["param_bytes"],
          "final_ratio": (result["final_rss_bytes"] - result["baseline_rss_bytes"]) / result["param_bytes"]}


def bench_train(pair: Pair) -> dict[str, Any]:
  """ReFT-r1 concepts/hour for the three ways of training, plus tokens/s and utilisation of the joint run."""
  from axjax.benchmarks import train_throughput
  from axjax.data.axbench_format import read_axbench
  from axjax.data.examples import lm_examples

  data = read_axbench(FLAGS.train_data)
  concepts = [c.concept_id for c in data.concepts[:FLAGS.train_concepts]]
  model = axjax.LoadedModel(FLAGS.model, pair.config, pair.params, pair.tokenizer, FLAGS.model)
  args = (model, data, FLAGS.train_layer, concepts, FLAGS.train_examples, FLAGS.train_epochs)
  # One warm-up of each (compilation excluded, as for the other suites), then timed turns.
  _, seconds = time_alternating({
      "axjax_joint": lambda: train_throughput.axjax_seconds(*args, joint=True),
      "axjax_one_at_a_time": lambda: train_throughput.axjax_seconds(*args, joint=False),
      "transformers_axbench_way": lambda: train_throughput.torch_seconds(pair.reference, *args, pair.device),
  }, FLAGS.train_repeats, log)
  ex = lm_examples(data, pair.tokenizer, concept_ids=concepts, train_on_negative=True, positions="all",
                   max_examples=FLAGS.train_examples)
  tokens = int(ex.attention_mask[ex.index[ex.row_valid]].sum()) * FLAGS.train_epochs
  c, layer = pair.config, FLAGS.train_layer
  per_layer = sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(pair.params["layers"]))
  # Estimated model FLOPs per trained token: the prefix forward once (amortised over epochs), then forward and
  # input-gradient backward through the layers above L and the tied unembedding.
  flops = (2 * per_layer * (layer + 1) / FLAGS.train_epochs
           + 4 * (per_layer * (c.num_layers - layer - 1) + c.vocab_size * c.hidden_size))
  result = {
      "concepts": len(concepts), "examples_per_concept": FLAGS.train_examples, "epochs": FLAGS.train_epochs,
      "layer": layer, "seconds": seconds,
      "concepts_per_hour": {k: 3600 * len(concepts) / v for k, v in seconds.items()},
      "ratio_joint_vs_transformers": seconds["transformers_axbench_way"] / seconds["axjax_joint"],
      "ratio_one_at_a_time_vs_transformers": seconds["transformers_axbench_way"] / seconds["axjax_one_at_a_time"],
      "joint_tokens_per_s": tokens / seconds["axjax_joint"],
  }
  if FLAGS.peak_tflops:
    result["joint_model_flop_utilisation"] = tokens * flops / seconds["axjax_joint"] / (FLAGS.peak_tflops * 1e12)
  return result


def bench_steer(pair: Pair) -> dict[str, Any]:
  """Rows/s of sampled steered generation: every row its own vector and strength, exactly --new_tokens each."""
  import torch

  rows, batch, new, width, layer = (FLAGS.steer_rows, FLAGS.steer_batch, FLAGS.new_tokens, FLAGS.prompt_length,
                                    FLAGS.steer_layer)
  reference_batch = 10  # AxBench's steering_batch_size for 2B models
  log(f"steer: {rows} rows, axjax batch {batch}, transformers batch {reference_batch}, layer {layer}, {new} new")
  ids, mask = left_padded_prompts(rows, width, pair.config.vocab_size)
  rng = np.random.default_rng(FLAGS.seed)
  vectors = rng.normal(size=(rows, pair.config.hidden_size)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  strengths = rng.uniform(0.0, 50.0, size=rows).astype(np.float32)
  sampling = SamplingConfig(max_new_tokens=new, temperature=1.0)
  intervention = axjax.steering(layer)
  keys = jax.random.split(jax.random.key(FLAGS.seed), rows)

  def run_axjax():
    for start in range(0, rows, batch):
      part = np.arange(start, start + batch).clip(max=rows - 1)  # fixed batch shape
      params = axjax.steering_params(vectors[part], strengths[part])
      out = generate_tokens(pair.params, pair.config, ids[part], mask[part], keys[part], sampling, (), 0,
                            intervention, params)
      jax.block_until_ready(out.tokens)

  dtype = next(pair.reference.parameters()).dtype
  t_delta = torch.from_numpy(vectors * strengths[:, None]).to(pair.device, dtype)
  current: dict[str, Any] = {}

  def hook(module, inputs, output):  # AxBench's AdditionIntervention: every position of every row
    hidden = output[0] if isinstance(output, tuple) else output
    hidden = hidden + current["delta"][:, None, :]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

  def run_reference():
    handle = pair.reference.model.layers[layer].register_forward_hook(hook)
    try:
      for start in range(0, rows, reference_batch):
        stop = min(rows, start + reference_batch)
        current["delta"] = t_delta[start:stop]
        with torch.inference_mode():
          pair.reference.generate(input_ids=torch.from_numpy(ids[start:stop]).long().to(pair.device),
                                  attention_mask=torch.from_numpy(mask[start:stop]).long().to(pair.device),
                                  do_sample=True, temperature=1.0, top_k=0, max_new_tokens=new,
                                  min_new_tokens=new, pad_token_id=0)
      sync(pair.device)
    finally:
      handle.remove()

  _, seconds = time_alternating({"axjax": run_axjax, "transformers": run_reference}, FLAGS.steer_repeats, log)
  return {"rows": rows, "batch": batch, "reference_batch": reference_batch, "new_tokens": new,
          "prompt_length": width, "layer": layer, "seconds": seconds,
          "rows_per_s": {k: rows / v for k, v in seconds.items()},
          "tokens_per_s": {k: rows * new / v for k, v in seconds.items()},
          "ratio": seconds["transformers"] / seconds["axjax"], "load_average_1m": os.getloadavg()[0]}


def bench_predict() -> dict[str, Any]:
  """Predicted cost of the ReFT-r1 joint step at --predict_preset's shape, from XLA's compiled analyses."""
  from axjax.benchmarks import compiled_cost

  shape = compiled_cost.StepShape(axjax.PRESETS[FLAGS.predict_preset], FLAGS.predict_layer, FLAGS.predict_batch,
                                  FLAGS.predict_length, FLAGS.predict_loss_positions, DTYPES[FLAGS.predict_dtype],
                                  FLAGS.predict_examples)
  log(f"predict: {FLAGS.predict_preset} ({FLAGS.predict_dtype}), layer {FLAGS.predict_layer}, concepts "
      f"{','.join(FLAGS.predict_concepts)}, remat {','.join(FLAGS.predict_remat)}: compiling on abstract shapes")
  return compiled_cost.predict(shape, tuple(int(c) for c in FLAGS.predict_concepts),
                               tuple(r == "true" for r in FLAGS.predict_remat), FLAGS.predict_peak_tflops * 1e12,
                               FLAGS.predict_bandwidth_tbps * 1e12, FLAGS.predict_memory_gb * 1e9, log=log)


def bench_gflops() -> dict[str, Any]:
  """Achieved GFLOP/s of the activation pass, the ReFT-r1 step and steered decoding against the measured peak."""
  from axjax.benchmarks import achieved_flops
  from axjax.data.axbench_format import read_axbench

  if FLAGS.model.startswith(RANDOM_PREFIX):
    from axjax.loading.load import embedded_gguf_path
    from axjax.loading.tokenizer import gguf_tokenizer

    tokenizer = gguf_tokenizer(embedded_gguf_path())
    config = axjax.PRESETS[FLAGS.model[len(RANDOM_PREFIX):]].replace(vocab_size=len(tokenizer))
    model = axjax.LoadedModel(FLAGS.model, config, axjax.init_params(config, jax.random.key(FLAGS.seed),
                                                                     DTYPES[FLAGS.dtype]), tokenizer, FLAGS.model)
  else:
    model = axjax.load(FLAGS.model, dtype=FLAGS.dtype)
  log(f"gflops: {FLAGS.model} ({FLAGS.dtype}), {FLAGS.train_data}, layer {FLAGS.gflops_layer}, concepts "
      f"{','.join(FLAGS.gflops_concepts)}")
  return achieved_flops.run(
      model, read_axbench(FLAGS.train_data), layer=FLAGS.gflops_layer,
      concepts=tuple(int(c) for c in FLAGS.gflops_concepts), max_examples=FLAGS.gflops_max_examples,
      activation_repeats=FLAGS.gflops_activation_repeats, train_steps=FLAGS.gflops_train_steps,
      decode_batch=FLAGS.gflops_decode_batch, prompt_length=FLAGS.prompt_length, new_tokens=FLAGS.new_tokens,
      steer_layer=FLAGS.steer_layer, peak_repeats=FLAGS.gflops_peak_repeats, xla_cost=FLAGS.gflops_xla_cost,
      profile_ops=FLAGS.gflops_profile, seed=FLAGS.seed, log=log)


def machine() -> dict[str, Any]:
  """Where the figures were taken."""
  import torch
  import transformers

  with open("/proc/meminfo") as f:
    mem_kib = int(f.readline().split()[1])
  return {"platform": platform.platform(), "cpu_cores": len(os.sched_getaffinity(0)),
          "memory_gib": round(mem_kib / 2**20, 1), "load_average_at_start": os.getloadavg(),
          "jax_devices": [str(d) for d in jax.devices()],
          "torch_device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
          "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__}}


def print_table(results: dict[str, Any]) -> None:
  """The results as a plain-text table on stdout."""
  rows = [("benchmark", "axjax tok/s", "transformers tok/s", "ratio axjax/transformers")]
  if "forward" in results:
    r = results["forward"]
    rows.append((f"forward {r['batch']}x{r['length']}", f"{r['axjax_tokens_per_s']:.1f}",
                 f"{r['transformers_tokens_per_s']:.1f}", f"{r['ratio']:.2f}x"))
  for r in results.get("decode", []):
    agreement = ""
    if "greedy_token_agreement" in r:
      agreement = f" (greedy agreement before EOS {r['greedy_token_agreement']:.0%})"
    rows.append((f"decode axjax b{r['batch']} vs transformers b{r['reference_batch']}",
                 f"{r['axjax_tokens_per_s']:.1f}", f"{r['transformers_tokens_per_s']:.1f}",
                 f"{r['ratio']:.2f}x{agreement}"))
  if len(rows) > 1:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"model {results['model']} ({results['dtype']}, transformers attention "
          f"{results['transformers_attention']})")
    for row in rows:
      print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
  if "load_memory" in results:
    r = results["load_memory"]
    print(f"load_memory {r['preset']} bf16: parameters {r['param_bytes'] / 1e9:.3f} GB, peak RSS over baseline "
          f"{r['peak_over_baseline_bytes'] / 1e9:.3f} GB = {r['peak_ratio']:.2f}x parameter bytes "
          f"(resident after load {r['final_ratio']:.2f}x), load {r['load_seconds']:.1f}s")
  if "steer" in results:
    r = results["steer"]
    print(f"steer {r['rows']} rows x {r['new_tokens']} sampled tokens, layer {r['layer']}: axjax batch {r['batch']} "
          f"{r['rows_per_s']['axjax']:.2f} rows/s ({r['tokens_per_s']['axjax']:.0f} tok/s), transformers hooked "
          f"generate batch {r['reference_batch']} {r['rows_per_s']['transformers']:.2f} rows/s "
          f"({r['tokens_per_s']['transformers']:.0f} tok/s): {r['ratio']:.2f}x")
  if "train" in results:
    r = results["train"]
    print(f"train ReFT-r1, {r['concepts']} concepts x {r['examples_per_concept']} examples x {r['epochs']} epochs, "
          f"layer {r['layer']}: concepts/hour " + ", ".join(f"{k} {v:.1f}" for k, v in r["concepts_per_hour"].items())
          + f"; joint {r['ratio_joint_vs_transformers']:.2f}x and one-at-a-time "
          f"{r['ratio_one_at_a_time_vs_transformers']:.2f}x the transformers reference; joint "
          f"{r['joint_tokens_per_s']:.0f} tokens/s"
          + (f", model FLOP utilisation {r['joint_model_flop_utilisation']:.1%}"
             if "joint_model_flop_utilisation" in r else ""))
  if "predict" in results:
    from axjax.benchmarks import compiled_cost

    print(compiled_cost.format_table(results["predict"]))
  if "gflops" in results:
    from axjax.benchmarks import achieved_flops

    print(achieved_flops.format_table(results["gflops"]))


def main(argv: list[str]) -> None:
  del argv
  results: dict[str, Any] = {"model": FLAGS.model, "dtype": FLAGS.dtype, "machine": machine()}
  if {"forward", "decode", "train", "steer"} & set(FLAGS.suite):
    log(f"loading {FLAGS.model} ({FLAGS.dtype}) in axjax and transformers")
    pair = load_pair(FLAGS.model, FLAGS.dtype)
    results["transformers_attention"] = pair.reference.config._attn_implementation
    if "forward" in FLAGS.suite:
      results["forward"] = bench_forward(pair)
    if "decode" in FLAGS.suite:
      results["decode"] = bench_decode(pair)
    if "train" in FLAGS.suite:
      results["train"] = bench_train(pair)
    if "steer" in FLAGS.suite:
      results["steer"] = bench_steer(pair)
    del pair  # frees the models before load_memory writes its checkpoint
  if "load_memory" in FLAGS.suite:
    results["load_memory"] = bench_load_memory()
  if "predict" in FLAGS.suite:
    results["predict"] = bench_predict()
  if "gflops" in FLAGS.suite:
    results["gflops"] = bench_gflops()
  print_table(results)
  os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
  with open(FLAGS.output, "w") as f:
    json.dump(results, f, indent=2)
  log(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  cli.run(main)
