"""AxBench's LoReFT and LoRA steering methods: per-concept adapters trained jointly over concepts.

Both edit the frozen Gemma at several layers (`adapters.loreft` sites, `adapters.Lora` on o_proj; AxBench's 2B
layers 5, 10, 15, 20 of 26) and learn from the LM loss on the outputs of each concept's POSITIVE examples.
Every concept's params sit on a leading concept axis and train in one compiled step (`joint_training`), each
with its own batches, clipping and AdamW state, so C concepts jointly equal C separate runs (tested). The
frozen model runs once up to `Adapters.after` (the first LoReFT site's layer, the layer below the first LoRA
layer); each step runs only the layers above it (`transformer.run_above`), and the output layer sees only the
output tokens, pooled across concepts (`objectives.UpperModel` placed after the last layer).

AxBench's loops (reft.py / lora.py): each DataLoader batch of `batch_size` rows has its own HF loss (the mean
NLL over its output tokens); `gradient_accumulation_steps` batches make an optimizer step, the epoch's last
batch closing a shorter group; the linear schedule decays over n_epochs * max(1, batches // accumulation)
steps (an undercount when they do not split evenly: the rate then stays 0, as in AxBench). LoReFT runs
backward BEFORE dividing by the accumulation count, so its step uses the SUM of the batches' gradients
(`accumulate="sum"`) and clips it to norm 1; LoRA divides first (`"mean"`: every batch's loss over the count,
even in a shorter group) and does not clip (`max_grad_norm`). Both: AdamW (0.9, 0.999, 1e-8), no warmup.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax import sharding
from axjax.data import batching
from axjax.data.examples import LMExamples
from axjax.errors import AxjaxError
from axjax.loading.load import LoadedModel
from axjax.methods.closed_form import concept_keys
from axjax.methods.joint_training import OptimConfig, StepBatch, train_jointly
from axjax.methods.objectives import MEMORY_LADDER, UpperModel
from axjax.methods.registry import hyperparameters, method
from axjax.methods.training_checkpoint import EpochCheckpoint
from axjax.model.adapters import Lora, first_last_mask, init_lora_params, init_loreft_params, loreft
from axjax.model.config import GemmaConfig
from axjax.model.transformer import run_above

Array = jax.Array
PyTree = Any
ADAPTER_KINDS = ("LoReFT", "LoRA")  # their hyperparameters: `registry.METHODS` (AxBench's sweeps)
_2B_LAYERS, _9B_LAYERS = (5, 10, 15, 20), (12, 20, 31, 39)  # of Gemma 2's 26 and 42 layers


def default_layers(num_layers: int) -> tuple[int, ...]:
  """AxBench's layers for a model of this depth: its own sets at 26 and 42 layers, else the 2B set scaled to
  the depth (round(N * k / 26), at least 1 so LoRA's activations exist below them, distinct)."""
  if num_layers in (26, 42):
    return _2B_LAYERS if num_layers == 26 else _9B_LAYERS
  return tuple(sorted({min(num_layers - 1, max(1, round(num_layers * k / 26))) for k in _2B_LAYERS}))


@dataclasses.dataclass(frozen=True)
class Adapters:
  """Which adapters a params stack holds and where they act (static under jit): what training and steering
  need. Params per concept: LoReFT {"rotation", "weight": [S, r, d], "bias": [S, r]} (one entry per site, see
  `adapters.loreft`), LoRA {"a": [L, d_in, r], "b": [L, r, d]} (`adapters.Lora`); stacks add a leading axis."""

  kind: str
  layers: tuple[int, ...]
  rank: int = 4
  positions: tuple[int, int] = (5, 5)  # LoReFT: the first and last prompt tokens it edits
  alpha: float = 32.0  # LoRA: rsLoRA scale alpha / sqrt(rank)
  dropout: float = 0.0  # LoRA, in training only

  def __post_init__(self):
    if self.kind not in ADAPTER_KINDS:
      raise AxjaxError(f"unknown adapter kind {self.kind!r}: choose from {', '.join(ADAPTER_KINDS)}")
    object.__setattr__(self, "layers", tuple(self.layers))

  @property
  def after(self) -> int:
    """The layer whose output the frozen pass caches: the first site's (it edits that output) or the one below
    the first LoRA layer."""
    return self.layers[0] - (self.kind == "LoRA")

  def check(self, config: GemmaConfig, stack: PyTree | None = None) -> None:
    """Refuses layers out of range or order, and a params stack [C, ...] of the wrong shapes."""
    for layer in self.layers:
      config.check_layer(layer)
    if not self.layers or list(self.layers) != sorted(set(self.layers)):
      raise AxjaxError(f"{self.kind} layers must be distinct and in increasing order; got {list(self.layers)}")
    if self.after < 0:
      raise AxjaxError("LoRA layers must start at layer 1 or above: training caches the layer below the first")
    if not 0 < self.rank <= config.hidden_size:
      raise AxjaxError(f"the {self.kind} rank must lie in 1..{config.hidden_size}; got {self.rank}")
    if stack is None:
      return
    n, r, d = len(self.layers), self.rank, config.hidden_size
    want = ({"rotation": (n, r, d), "weight": (n, r, d), "bias": (n, r)} if self.kind == "LoReFT" else
            {"a": (n, config.num_heads * config.head_dim, r), "b": (n, r, d)})
    got = {k: tuple(np.shape(v)) for k, v in stack.items()} if isinstance(stack, dict) else {}
    lead = {s[:1] for s in got.values()}
    if set(got) != set(want) or len(lead) != 1 or any(got[k][1:] != s for k, s in want.items()):
      raise AxjaxError(f"{self.kind} params of shapes {got} do not fit: they need {want}, each behind one "
                       "leading concept axis")

  def init(self, config: GemmaConfig, keys: Array) -> dict[str, Array]:
    """A stack [C, ...] initialised as pyreft/peft do (`init_loreft_params`, `init_lora_params`), one key each."""
    return _init_stack(self, config, keys)

  def edits(self, params: PyTree, batched: bool) -> dict[str, Any]:
    """`run_above`/`generate_tokens` keyword arguments applying one concept's params (`batched`: one per row)."""
    if self.kind == "LoRA":
      return {"lora": Lora(self.layers, self.alpha, self.dropout), "lora_params": params}
    site = lambda i: jax.tree.map(lambda x: jnp.take(x, i, axis=int(batched)), params)
    return {"intervention": tuple(map(loreft, self.layers)),
            "intervention_params": tuple(site(i) for i in range(len(self.layers)))}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_stack(adapters: Adapters, config: GemmaConfig, keys: Array) -> dict[str, Array]:
  def one(key):
    if adapters.kind == "LoRA":
      return init_lora_params(config, Lora(adapters.layers), key, adapters.rank)
    sites = [init_loreft_params(config, k, adapters.rank) for k in jax.random.split(key, len(adapters.layers))]
    return jax.tree.map(lambda *x: jnp.stack(x), *sites)
  return jax.vmap(one)(keys)


def adapter_hyperparameters(kind: str, config: GemmaConfig, overrides: dict[str, Any] | None = None
                            ) -> dict[str, Any]:
  """AxBench's defaults for the model's size class, then the overrides (checked)."""
  if kind not in ADAPTER_KINDS:
    raise AxjaxError(f"unknown adapter kind {kind!r}: choose from {', '.join(ADAPTER_KINDS)}")
  hp = hyperparameters(method(kind), config, overrides)
  if min(hp["batch_size"], hp["gradient_accumulation_steps"], hp["n_epochs"]) < 1 or hp["max_grad_norm"] < 0:
    raise AxjaxError(f"{kind} batch_size, gradient_accumulation_steps and n_epochs must be at least 1 and "
                     "max_grad_norm at least 0")
  return hp


def adapters_from(kind: str, config: GemmaConfig, hp: dict[str, Any]) -> Adapters:
  """The `Adapters` the hyperparameters describe, checked against the model."""
  text = hp["layers"]
  if text == "auto":
    layers = default_layers(config.num_layers)
  elif re.fullmatch(r"\d+(\+\d+)*", text):
    layers = tuple(int(x) for x in text.split("+"))
  else:
    raise AxjaxError(f"{kind}.layers must be 'auto' or layers joined by '+' (e.g. 5+10+15+20), not {text!r}")
  positions = (5, 5)
  if kind == "LoReFT":
    match = re.fullmatch(r"f(\d+)\+l(\d+)", hp["positions"])
    if match is None:
      raise AxjaxError(f"LoReFT.positions must read fN+lM (pyreft's first N and last M prompt tokens), not "
                       f"{hp['positions']!r}")
    positions = (int(match.group(1)), int(match.group(2)))
  adapters = Adapters(kind, layers, hp["low_rank_dimension"], positions, hp.get("lora_alpha", 32.0),
                      hp.get("dropout", 0.0))
  adapters.check(config)
  return adapters


@dataclasses.dataclass(frozen=True)
class AdapterObjective:
  """Per concept, the LM loss of its adapter-edited model on the output tokens of its step's rows: `accumulation`
  batches of rows, each its own mean over output tokens, summed (`summed`) or summed / accumulation.

  The head is an `UpperModel` after the last layer: it only pools the output positions of every (concept,
  batch) and applies the vocabulary-chunked cross-entropy.
  """

  adapters: Adapters
  head: UpperModel
  accumulation: int
  summed: bool
  remat: bool

  def joint(self, params, batch, progress, model_params) -> tuple[Array, dict[str, Array]]:
    """Every concept's (loss [C], {"lm": mean NLL of its non-empty batches}) for params and batch [C, ...]."""
    del progress
    adapters, config = self.adapters, self.head.config
    chex.assert_rank([batch["acts"], batch["loss_index"]], [4, 3])
    chex.assert_axis_dimension(batch["loss_index"], 1, self.accumulation)

    def final_stream(p, b):
      edits = adapters.edits(p, batched=False)
      if adapters.kind == "LoRA" and adapters.dropout > 0:
        edits["lora_rng"] = b["dropout_key"]
      return run_above(model_params, config, b["acts"], b["mask"], adapters.after,
                       intervention_mask=b.get("positions"), remat=self.remat, **edits)

    h = jax.vmap(final_stream)(params, batch)  # [C, A * B, T, d]
    c, a = h.shape[0], self.accumulation
    split = lambda x: x.reshape(c * a, x.shape[1] // a, *x.shape[2:])  # [C * A, B, ...]: one entry per batch
    flat = lambda x: x.reshape(c * a, -1)
    nll = self.head.output_nll(model_params, split(h), {
        "tokens": split(batch["tokens"]), "mask": split(batch["mask"]), "loss_index": flat(batch["loss_index"]),
        "loss_valid": flat(batch["loss_valid"])}).reshape(c, a)
    present = (batch["loss_valid"].sum(-1) > 0).astype(jnp.float32)  # [C, A]: batches with output tokens
    lm = jnp.sum(nll * present, -1) / jnp.maximum(present.sum(-1), 1.0)
    return jnp.sum(nll, -1) / (1.0 if self.summed else a), {"lm": lm}


def step_plan(row_valid: np.ndarray, concept_ids: np.ndarray, hp: dict[str, Any], seed: int
              ) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, int]:
  """AxBench's optimizer steps: per step, positions and weights [C, A, B] along each concept's examples (A =
  gradient_accumulation_steps; a shorter group's missing batches have weight 0), the schedule's length, and
  the steps per epoch. The batches are `batching.minibatches` (each concept's own order per epoch)."""
  bs, accum = hp["batch_size"], hp["gradient_accumulation_steps"]
  per_epoch = batching.steps_per_epoch(row_valid, bs)
  minibatches = list(batching.minibatches(row_valid, bs, hp["n_epochs"], seed, concept_ids))
  steps = []
  for start in range(0, len(minibatches), per_epoch):
    epoch = minibatches[start:start + per_epoch]
    for first in range(0, per_epoch, accum):
      group = epoch[first:first + accum]
      positions = np.stack([b.positions for b in group] + [group[0].positions] * (accum - len(group)), 1)
      weight = np.stack([b.weight for b in group] + [np.zeros_like(group[0].weight)] * (accum - len(group)), 1)
      steps.append((positions, weight))
  return steps, hp["n_epochs"] * max(1, per_epoch // accum), optimizer_steps_per_epoch(row_valid, hp)


def optimizer_steps_per_epoch(row_valid: np.ndarray, hp: dict[str, Any]) -> int:
  """`step_plan`'s optimizer steps per epoch: the epoch's batches in groups of gradient_accumulation_steps (a
  shorter last group included)."""
  return -(-batching.steps_per_epoch(row_valid, hp["batch_size"]) // hp["gradient_accumulation_steps"])


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
  """One joint training run, ready for `train_jointly` (built by `prepare_training`)."""

  adapters: Adapters
  hyperparameters: dict[str, Any]
  concept_ids: np.ndarray  # [C]
  init: dict[str, Array]  # the stack [C, ...] training starts from
  arrays: dict[str, np.ndarray]  # per shared example row [U, ...]: acts, mask, tokens (LoReFT: positions)
  batches: list[StepBatch]  # per optimizer step: rows [C, A * B], weights, packed output positions [C, A, W]
  objectives: tuple[AdapterObjective, ...]  # equal objectives, fastest first (MEMORY_LADDER)
  optim: OptimConfig
  steps_per_epoch: int


def prepare_training(kind: str, config: GemmaConfig, examples: LMExamples, acts: np.ndarray, *,
                     overrides: dict[str, Any] | None = None, seed: int = 0, subset: np.ndarray | None = None,
                     init: dict[str, Any] | None = None, mesh: jax.sharding.Mesh | None = None) -> TrainingSetup:
  """The training run of `train_adapters` (same arguments), checked, without running it."""
  hp = adapter_hyperparameters(kind, config, overrides)
  adapters = adapters_from(kind, config, hp)
  if acts.shape != (*examples.tokens.shape, config.hidden_size):
    raise AxjaxError(f"acts of shape {acts.shape} do not match the examples' tokens {examples.tokens.shape} and "
                     f"the model width {config.hidden_size}")
  subset = np.arange(len(examples.concept_ids)) if subset is None else np.asarray(subset)
  if subset.ndim != 1 or not subset.size or subset.min() < 0 or subset.max() >= len(examples.concept_ids):
    raise AxjaxError(f"subset must list positions among the {len(examples.concept_ids)} concepts of the examples")
  concept_ids = examples.concept_ids[subset]
  keys = concept_keys(seed, concept_ids)
  stack = adapters.init(config, jax.vmap(jax.random.fold_in, (0, None))(keys, 0)) if init is None else init
  adapters.check(config, stack)
  if len(jax.tree.leaves(stack)[0]) != len(subset):
    raise AxjaxError(f"init holds {len(jax.tree.leaves(stack)[0])} adapters for {len(subset)} concepts")
  plan, schedule, per_epoch = step_plan(examples.row_valid[subset], concept_ids, hp, seed)
  c, a, b = plan[0][0].shape
  micro = [(examples.shared_rows(p.reshape(c, a * b), subset).reshape(c * a, b), w.reshape(c * a, b))
           for p, w in plan]
  width = batching.packed_width(examples.loss_mask, micro)
  dropout_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
  batches = []
  for step, (rows, weight) in enumerate(micro):
    index, valid = batching.packed_loss_positions(examples.loss_mask, rows, weight, width)
    extra = {"loss_index": index.reshape(c, a, width), "loss_valid": valid.reshape(c, a, width)}
    if kind == "LoRA" and adapters.dropout > 0:
      extra["dropout_key"] = np.asarray(jax.random.key_data(
          jax.vmap(jax.random.fold_in, (0, None))(dropout_keys, step)))
    batches.append(StepBatch(rows.reshape(c, a * b), weight.reshape(c, a * b), extra))
  arrays = {"acts": acts, "mask": examples.attention_mask, "tokens": examples.tokens}
  if kind == "LoReFT":
    t = np.arange(examples.tokens.shape[1])
    prompt = examples.attention_mask & (t[None] < examples.prompt_lengths[:, None])
    arrays["positions"] = np.asarray(first_last_mask(jnp.asarray(prompt), *adapters.positions))
  mesh = mesh or sharding.make_mesh()
  groups = mesh.shape[sharding.CONCEPTS]
  pooled = batching.pooled_rows([s.extra["loss_valid"].reshape(c * a, width) for s in batches],
                                sharding.concept_multiple(mesh, c) * a, groups)
  objectives = tuple(AdapterObjective(adapters, UpperModel(config, config.num_layers - 1, False, pooled, groups,
                                                           chunk), a, hp["accumulate"] == "sum", remat)
                     for remat, chunk in MEMORY_LADDER)
  optim = OptimConfig(lr=hp["lr"], total_steps=schedule, weight_decay=hp["weight_decay"],
                      clip_norm=hp["max_grad_norm"] or None)
  return TrainingSetup(adapters, hp, concept_ids, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), stack),
                       arrays, batches, objectives, optim, per_epoch)


@dataclasses.dataclass(frozen=True)
class TrainedAdapters:
  """Every concept's trained adapter and how training went."""

  adapters: Adapters
  params: dict[str, np.ndarray]  # the stack [C, ...], concepts in `concept_ids` order
  concept_ids: np.ndarray  # [C]
  record: dict[str, np.ndarray]  # "loss" (the optimised sum or mean) and "lm": [steps, C]; NaN on skipped steps
  steps_per_epoch: int
  hyperparameters: dict[str, Any]


def train_adapters(kind: str, model: LoadedModel, examples: LMExamples, acts: np.ndarray, *,
                   overrides: dict[str, Any] | None = None, seed: int = 0, subset: np.ndarray | None = None,
                   init: dict[str, Any] | None = None, mesh: jax.sharding.Mesh | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   checkpoint_dir: str | None = None) -> TrainedAdapters:
  """Trains `kind` ("LoReFT" or "LoRA") for the concepts at positions `subset` of `examples` (default all)
  jointly, on each concept's positive rows.

  `examples`: `lm_examples` of the positives (AxBench's `binarize_dataset=False`, `train_on_negative=False`);
  `acts` [U, T, d]: their residual stream after layer `adapters_from(...).after` (`layer_activations`).
  `init`: a stack to start from instead of pyreft's/peft's initialisation (keyed by seed and concept id).
  LoRA's dropout keys come from (seed, concept id, step). With `checkpoint_dir`, the state is saved every
  epoch and a rerun resumes (`EpochCheckpoint`). `progress(done, total)` follows the optimizer steps.
  """
  mesh = mesh or sharding.make_mesh()
  setup = prepare_training(kind, model.config, examples, acts, overrides=overrides, seed=seed, subset=subset,
                           init=init, mesh=mesh)
  checkpoint = None
  if checkpoint_dir is not None:
    settings = {**setup.hyperparameters, "kind": kind, "seed": seed, "concept_ids": setup.concept_ids.tolist(),
                "custom_init": init is not None}
    checkpoint = EpochCheckpoint(checkpoint_dir, setup.steps_per_epoch, json.loads(json.dumps(settings)))
  total = len(setup.batches)
  report = None if progress is None else (lambda step, _: progress(step + 1, total))
  params, record = train_jointly(setup.optim, setup.objectives, setup.init,
                                 {k: jnp.asarray(v) for k, v in setup.arrays.items()}, setup.batches,
                                 frozen=model.params, progress=report, checkpoint=checkpoint, mesh=mesh)
  return TrainedAdapters(setup.adapters, {k: np.asarray(v) for k, v in params.items()}, setup.concept_ids, record,
                         setup.steps_per_epoch, setup.hyperparameters)
