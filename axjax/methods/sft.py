"""AxBench's SFT: the whole model fine-tuned on one concept's positive examples, one concept at a time.

AxBench's loop (axbench/models/sft.py `SFT._train`, sweep/wuzhengx/2b/l{10,20}/sft.yaml; 2B only, its 9B path
is HF Trainer with FSDP), which `sft_step` and `train_sft` reproduce:
- data: the concept's positives (binarize_dataset false, train_on_negative false) in DataLoader batches of
  `batch_size` (reshuffled every epoch, the last one shorter); loss: HF's causal-LM loss of each batch, the
  mean NLL over its output tokens (labels -100 on the prompt and padding);
- accumulation: each batch's loss is divided by `gradient_accumulation_steps` BEFORE backward (as LoRA, unlike
  LoReFT), also in the epoch's last, shorter group; a step follows every `gradient_accumulation_steps` batches
  and the epoch's last batch;
- clipping: `clip_grad_norm_(parameters, 1.0)` on every step (hard-coded: 1.0 whatever the config);
- optimizer: torch AdamW with its defaults, betas (0.9, 0.999), eps 1e-8, weight_decay from the config (0.0);
  `get_scheduler("linear", num_warmup_steps=0)` over n_epochs * max(1, batches // accumulation) steps (the
  same undercount as reft.py / lora.py: with uneven groups the rate reaches 0 early and stays there);
- precision: the sweep sets use_bf16, so AxBench's model, gradients and AdamW moments are all bfloat16 (no
  float32 master weights: an update below half a bf16 step of its weight rounds away). `dtype` chooses:
  "float32" (the default here) or "bfloat16" (AxBench's arithmetic, half the memory);
- concepts: `max_concepts: 20`; the original model is reloaded after each. Here `model.params` is never
  changed, so every concept starts from it.

The step runs the `gradient_accumulation_steps` batches under one `lax.scan` (a gradient accumulator as
carry), the decoder layers rematerialised, and the output layer only at output-token positions, in
vocabulary chunks: its tied unembedding trains too, so `lm_loss.token_nll` (which freezes it) does not fit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from axjax.data import batching
from axjax.data.examples import AXBENCH_MAX_LENGTH, LMExamples
from axjax.errors import AxjaxError
from axjax.loading.load import LoadedModel
from axjax.methods.adapter_training import step_plan
from axjax.methods.registry import METHODS
from axjax.model.config import GemmaConfig
from axjax.model.layers import RMSNorm
from axjax.model.transformer import embed, frame_from_mask, init_params, run_layers

Array = jax.Array
PyTree = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
VOCAB_CHUNK = 4_096  # vocabulary entries per step of the output layer's scan: [rows, chunk] float32 logits
_COPIES = 5  # params, accumulated gradient, one batch's gradient, AdamW's two moments


@dataclasses.dataclass(frozen=True)
class SFTStep:
  """What the compiled step depends on besides shapes; static under jit, so equal settings share one compile."""

  config: GemmaConfig
  weight_decay: float
  max_grad_norm: float  # 0: no clipping
  vocab_chunk: int = VOCAB_CHUNK


def check_hyperparameters(hp: dict[str, Any]) -> None:
  """Refuses SFT hyperparameters that are missing or out of range, in one sentence."""
  missing = sorted(set(METHODS["SFT"].small) - set(hp))
  if missing:
    raise AxjaxError(f"SFT hyperparameters lack {', '.join(missing)}")
  if min(hp["batch_size"], hp["gradient_accumulation_steps"], hp["n_epochs"], hp["max_concepts"]) < 1:
    raise AxjaxError("SFT batch_size, gradient_accumulation_steps, n_epochs and max_concepts must be at least 1")
  if hp["lr"] < 0 or hp["weight_decay"] < 0 or hp["max_grad_norm"] < 0:
    raise AxjaxError("SFT lr, weight_decay and max_grad_norm must be at least 0")
  if hp["dtype"] not in DTYPES:
    raise AxjaxError(f"SFT.dtype must be one of {', '.join(DTYPES)}, not {hp['dtype']!r}")


def output_nll(params: PyTree, config: GemmaConfig, h: Array, targets: Array, chunk: int = VOCAB_CHUNK) -> Array:
  """-log p(target), float32 [N], for rows h [N, d] before the final norm: differentiable in h, the final norm
  and the tied unembedding. The log-sum-exp runs over vocabulary chunks, each chunk's logits recomputed in the
  backward pass, so only [N, chunk] logits exist at a time."""
  chex.assert_rank(h, 2)
  chex.assert_shape(targets, (h.shape[0],))
  table = params["embed"]
  x = RMSNorm(config.rms_norm_eps).apply({"params": params["final_norm"]}, h)
  cap = config.final_logit_softcap
  capped = lambda z: jnp.tanh(z / cap) * cap if cap else z
  vocab = table.shape[0]
  chunk = min(chunk, vocab)
  n_chunks = -(-vocab // chunk)
  chunks = jnp.pad(table, ((0, n_chunks * chunk - vocab), (0, 0))).reshape(n_chunks, chunk, -1)

  @jax.checkpoint
  def chunk_lse(xs):
    rows, first = xs
    logits = capped(jnp.matmul(x, rows.T, preferred_element_type=jnp.float32))
    real = first + jnp.arange(chunk) < vocab  # the zero padding of the last chunk
    return jax.nn.logsumexp(jnp.where(real[None], logits, -jnp.inf), axis=-1)

  lse = jax.nn.logsumexp(jax.lax.map(chunk_lse, (chunks, jnp.arange(n_chunks) * chunk)), axis=0)
  target = capped(jnp.einsum("nd,nd->n", x, jnp.take(table, targets, axis=0), preferred_element_type=jnp.float32))
  return lse - target


def batch_loss(params: PyTree, config: GemmaConfig, batch: dict[str, Array], chunk: int = VOCAB_CHUNK) -> Array:
  """HF's causal-LM loss of one batch (tokens, mask [B, T]; packed loss_index, loss_valid [W] from
  `batching.packed_loss_positions`): the mean NLL over its output tokens, 0 for a batch without any."""
  tokens = batch["tokens"]
  chex.assert_rank([tokens, batch["loss_index"]], [2, 1])
  chex.assert_equal_shape([tokens, batch["mask"]])
  chex.assert_equal_shape([batch["loss_index"], batch["loss_valid"]])
  x = embed(params, config, tokens)
  h, _, _ = run_layers(params["layers"], config, x, frame_from_mask(batch["mask"]), 0, remat=True)
  index = batch["loss_index"]
  nll = output_nll(params, config, h.reshape(-1, config.hidden_size)[index], tokens.reshape(-1)[index + 1], chunk)
  valid = batch["loss_valid"]
  return jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def _adam(weight_decay: float) -> optax.GradientTransformation:
  """torch AdamW's direction (decoupled weight decay included); `sft_step` scales it by the step's rate."""
  return optax.chain(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), optax.add_decayed_weights(weight_decay))


def _global_norm(tree: PyTree) -> Array:
  """The gradient's global L2 norm in float32, whatever its dtype (clip_grad_norm_'s total_norm)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def sft_step(step: SFTStep, params: PyTree, opt_state: PyTree, batch: dict[str, Array], lr: Array
             ) -> tuple[PyTree, PyTree, dict[str, Array]]:
  """One AxBench optimizer step: per batch [A, ...] (A = gradient_accumulation_steps) the gradient of its
  loss / A, summed; clipped to `max_grad_norm` as clip_grad_norm_ does; AdamW at rate `lr`. Returns the new
  params and state (both donated) and {"loss": the summed losses / A, "grad_norm": before clipping}."""
  chex.assert_rank(batch["tokens"], 3)
  accumulation = batch["tokens"].shape[0]

  def add_batch(grads, one):
    loss, g = jax.value_and_grad(lambda p: batch_loss(p, step.config, one, step.vocab_chunk) / accumulation)(params)
    return jax.tree.map(jnp.add, grads, g), loss

  grads, losses = jax.lax.scan(add_batch, jax.tree.map(jnp.zeros_like, params), batch)
  norm = _global_norm(grads)
  if step.max_grad_norm:
    scale = jnp.minimum(1.0, step.max_grad_norm / (norm + 1e-6))
    grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)
  direction, opt_state = _adam(step.weight_decay).update(grads, opt_state, params)
  params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), params, direction)
  return params, opt_state, {"loss": jnp.sum(losses), "grad_norm": norm}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _start(params: PyTree, dtype: str, weight_decay: float) -> tuple[PyTree, PyTree]:
  """A fresh copy of the params in the training dtype (jit outputs never alias inputs) and its AdamW state."""
  params = jax.tree.map(lambda a: a.astype(DTYPES[dtype]), params)
  return params, _adam(weight_decay).init(params)


def packed_width(examples: LMExamples, batch_size: int) -> int:
  """Output tokens any batch of `batch_size` rows of these examples can hold (its rows' largest counts summed):
  one width for every concept, so every concept's steps have the same shapes and share one compile."""
  counts = np.sort(examples.loss_mask.sum(axis=1))[::-1]
  return max(1, int(counts[:batch_size].sum()))


def step_batches(examples: LMExamples, rows: np.ndarray, weight: np.ndarray, width: int) -> dict[str, np.ndarray]:
  """One step's arrays for `sft_step` from its rows and weights [A, B] of the shared examples: tokens and mask
  [A, B, T], packed output positions and validity [A, width] (a missing batch of a shorter group has none)."""
  chex.assert_equal_shape([rows, weight])
  index, valid = batching.packed_loss_positions(examples.loss_mask, rows, weight, width)
  return {"tokens": examples.tokens[rows], "mask": examples.attention_mask[rows], "loss_index": index,
          "loss_valid": valid}


def linear_rate(lr: float, step: int, total: int) -> float:
  """transformers' linear schedule without warmup at optimizer step `step` (0-based): 0 from `total` on."""
  return lr * max(0.0, (total - step) / max(1, total))


def train_sft(model: LoadedModel, examples: LMExamples, concept_position: int, hp: dict[str, Any], seed: int,
              progress: Callable[[int, int], None] | None = None) -> tuple[PyTree, dict[str, np.ndarray]]:
  """Fine-tunes `model.params` on the positives of the concept at `concept_position` of `examples`
  (`lm_examples` with train_on_negative=False) as AxBench's SFT does (module docstring).

  Returns the fine-tuned params (model.params' structure and dtypes; model.params itself is left unchanged)
  and the record {"loss", "grad_norm", "lr"}: float32 [steps]. Batch orders come from (seed, concept id) as
  in `batching.minibatches`. `progress(done, total)` follows the optimizer steps.
  """
  check_hyperparameters(hp)
  chex.assert_equal_shape([examples.tokens, examples.attention_mask, examples.loss_mask])
  if not 0 <= concept_position < len(examples.concept_ids):
    raise AxjaxError(f"concept_position {concept_position} is not among the {len(examples.concept_ids)} concepts "
                     "of the examples")
  subset = [concept_position]
  plan, total, _ = step_plan(examples.row_valid[subset], examples.concept_ids[subset], hp, seed)
  width = packed_width(examples, hp["batch_size"])
  step = SFTStep(model.config, float(hp["weight_decay"]), float(hp["max_grad_norm"]))
  params, opt_state = _start(model.params, hp["dtype"], step.weight_decay)
  record: dict[str, list[float]] = {"loss": [], "grad_norm": [], "lr": []}
  for k, (positions, weight) in enumerate(plan):
    a, b = positions.shape[1:]
    rows = examples.shared_rows(positions.reshape(1, a * b), subset).reshape(a, b)
    rate = linear_rate(hp["lr"], k, total)
    params, opt_state, values = sft_step(step, params, opt_state, step_batches(examples, rows, weight[0], width),
                                         np.float32(rate))
    record["lr"].append(rate)
    for name, value in values.items():
      record[name].append(float(value))
    if progress is not None:
      progress(k + 1, len(plan))
  del opt_state
  params = jax.tree.map(lambda p, base: p.astype(base.dtype), params, model.params)
  return params, {k: np.asarray(v, np.float32) for k, v in record.items()}


def parameter_count(config: GemmaConfig) -> int:
  """The model's parameter count, from shapes alone (nothing is allocated)."""
  shapes = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
  return sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))


def activation_bytes(config: GemmaConfig, batch_size: int, length: int, dtype: str) -> int:
  """Estimated activations of one batch of `batch_size` rows of `length` tokens, layers rematerialised: every
  layer's input [B, T, d] kept for the backward pass; one layer's intermediates recomputed, with their
  gradients (x2): residual and norms (6 d), queries, keys, values and attention output ((2 H + 2 K) hd), the
  MLP's gate, up and product (3 ffn) per token, and float32 attention scores, probabilities and their
  gradient (3 x [B, H, T, T]); the output layer's float32 [B T, chunk] logits, exponentials and gradient."""
  c = config
  width = jnp.dtype(DTYPES[dtype]).itemsize
  tokens = batch_size * length
  kept = c.num_layers * tokens * c.hidden_size * width
  per_token = 6 * c.hidden_size + (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim + 3 * c.intermediate_size
  layer = 2 * tokens * per_token * width + 3 * batch_size * c.num_heads * length * length * 4
  return kept + layer + 3 * tokens * min(VOCAB_CHUNK, c.vocab_size) * 4


def sft_memory_bytes(config: GemmaConfig, hp: dict[str, Any], length: int = AXBENCH_MAX_LENGTH) -> int:
  """Bytes SFT needs besides the loaded model: at `hp["dtype"]` the fine-tuned params, the accumulated
  gradient, one batch's gradient before it joins it and AdamW's two moments, plus `activation_bytes` for
  rows of `length` tokens (default AxBench's truncation length, an upper bound)."""
  check_hyperparameters(hp)
  width = jnp.dtype(DTYPES[hp["dtype"]]).itemsize
  return _COPIES * parameter_count(config) * width + activation_bytes(config, hp["batch_size"], length, hp["dtype"])


def check_sft_memory(config: GemmaConfig, hp: dict[str, Any], available_bytes: int,
                     length: int = AXBENCH_MAX_LENGTH) -> None:
  """Refuses, in one sentence, an SFT run that needs more than `available_bytes` (what is free with the model
  loaded, e.g. `joint_training.memory_budget()`)."""
  needed = sft_memory_bytes(config, hp, length)
  if needed <= available_bytes:
    return
  remedy = ("pass --hparams SFT.dtype=bfloat16 (and --dtype bfloat16 for the model) or use a smaller model"
            if hp["dtype"] == "float32" else "use a smaller model or a smaller SFT.batch_size")
  raise AxjaxError(f"SFT needs about {needed / 1e9:.2f} GB ({hp['dtype']} parameters, gradients, AdamW moments "
                   f"and activations) but only {available_bytes / 1e9:.2f} GB are available: {remedy}")
