"""RePS and its preference baselines: per-concept steering edits trained jointly on preference pairs.

Upstream's PreferenceModel (reference section 6): every positive example gives two pairs, `orig_add` (winner:
prompt + concept response y_c, loser: prompt + the model's own y, each steered with its own factor drawn from
the training list) and `orig_sub` (winner y, loser y_c, steered with factor 0, the vector's null-out, or with
minus a drawn factor: RePS's LoReFT and LoRA, and BiPO). The policy is the edited model, the reference the same model
unedited; each sequence scores the summed log-probs of its response tokens (`preference_loss`). A step's loss
is the mean over its pairs, its gradient clipped to norm 1 per concept; AdamW, linear decay, no warmup.

Per step and concept the rows are laid out [A accumulation batches, B examples, 4]: add-winner, add-loser,
sub-winner, sub-loser (the LM objective of the "Lang." rows, upstream's Concept* models: [A, B, 1], the steered
concept response alone, each batch's HF loss). The frozen model runs once up to the edit's first layer (`PreferenceEdit.after`) over
both sequences of every example, and once to the end for the reference log-probs; each step runs only the
layers above. Every concept draws its factors from (seed, concept id, step), so joint equals separate runs.

Edits (`PreferenceEdit.kind`): "vector" `h + (alpha + b) v` after one layer at every position from the chat
prefix on (`interventions.preference_vector`); "LoReFT" `h + R^T(alpha (W h + b - R h))` at the first and last
prompt tokens of several layers; "LoRA" `out + x (alpha A B)` on o_proj of several layers (peft's scale
unused, as upstream's forward), alpha folded into B per row.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax import sharding
from axjax.data import batching
from axjax.data.preference_examples import PreferenceExamples
from axjax.errors import AxjaxError
from axjax.methods.adapter_training import Adapters, step_plan
from axjax.methods.closed_form import concept_keys
from axjax.methods.joint_training import OptimConfig, StepBatch, train_jointly
from axjax.methods.objectives import MEMORY_LADDER, UpperModel
from axjax.methods.preference_loss import PreferenceLoss, normalising_lengths
from axjax.methods.training_checkpoint import EpochCheckpoint
from axjax.model.adapters import Lora, first_last_mask, loreft
from axjax.model.config import GemmaConfig
from axjax.model.interventions import preference_vector
from axjax.model.lm_loss import token_nll
from axjax.model.transformer import run_above

Array = jax.Array
PyTree = Any
KINDS = ("vector", "LoReFT", "LoRA")
# The sub pair's factors: 0 (upstream's null_it_out: the vector's null-out) or minus a drawn one ("normal").
SUBTRACTIONS = ("null_out", "negate")
LM = "lm"  # the loss_type of upstream's Concept* models (the "Lang." rows): the LM loss of the steered y_c


@dataclasses.dataclass(frozen=True)
class PreferenceEdit:
  """Which edit a concept's params make and where (static under jit)."""

  kind: str
  layers: tuple[int, ...]
  rank: int = 4
  positions: tuple[int, int] = (5, 5)  # LoReFT: first and last prompt tokens
  dropout: float = 0.0  # LoRA: on o_proj's input, in training

  def __post_init__(self):
    if self.kind not in KINDS:
      raise AxjaxError(f"unknown preference edit {self.kind!r}: choose from {', '.join(KINDS)}")
    object.__setattr__(self, "layers", tuple(self.layers))
    if self.kind == "vector" and len(self.layers) != 1:
      raise AxjaxError(f"a steering vector acts after one layer, not {list(self.layers)}")

  @property
  def adapters(self) -> Adapters | None:
    """LoReFT's and LoRA's params and checks (`adapter_training.Adapters`); None for the vector."""
    if self.kind == "vector":
      return None
    return Adapters(self.kind, self.layers, self.rank, self.positions, math.sqrt(self.rank), self.dropout)

  @property
  def after(self) -> int:
    """The layer whose output the frozen pass caches."""
    return self.layers[0] if self.adapters is None else self.adapters.after

  def check(self, config: GemmaConfig) -> None:
    for layer in self.layers:
      config.check_layer(layer)
    if self.adapters is not None:
      self.adapters.check(config)

  def init(self, config: GemmaConfig, keys: Array) -> dict[str, Array]:
    """A stack [C, ...]: the vector as upstream's Linear(d, 1) (uniform(-1/sqrt(d), 1/sqrt(d)), bias 0),
    LoReFT and LoRA as pyreft and peft."""
    if self.adapters is not None:
      return self.adapters.init(config, keys)
    d = config.hidden_size
    bound = 1.0 / math.sqrt(d)
    vectors = jax.vmap(lambda k: jax.random.uniform(k, (d,), jnp.float32, -bound, bound))(keys)
    return {"vector": vectors, "bias": jnp.zeros(len(keys), jnp.float32)}

  def edits(self, params: PyTree, factor: Array) -> dict[str, Any]:
    """`run_above` keyword arguments applying one concept's params with a factor per row [R]."""
    if self.kind == "vector":
      return {"intervention": preference_vector(self.layers[0]),
              "intervention_params": {**params, "factor": factor}}
    if self.kind == "LoRA":
      rows = factor.shape[0]
      lora_params = {"a": jnp.broadcast_to(params["a"], (rows, *params["a"].shape)),
                     "b": factor[:, None, None, None] * params["b"][None]}
      return {"lora": Lora(self.layers, math.sqrt(self.rank), self.dropout), "lora_params": lora_params}
    site = lambda i: {**jax.tree.map(lambda x: x[i], params), "factor": factor}
    return {"intervention": tuple(map(loreft, self.layers)),
            "intervention_params": tuple(site(i) for i in range(len(self.layers)))}


@dataclasses.dataclass(frozen=True)
class PreferenceObjective:
  """Per concept, the mean preference loss of its step's pairs: `accumulation` batches, each the mean over its
  weighted pairs, summed / accumulation (upstream divides each minibatch's mean by their count)."""

  edit: PreferenceEdit
  head: UpperModel
  loss: PreferenceLoss | None  # None: the LM objective on the steered concept responses
  accumulation: int
  remat: bool

  def joint(self, params, batch, progress, model_params) -> tuple[Array, dict[str, Array]]:
    del progress
    config, a = self.head.config, self.accumulation
    chex.assert_rank([batch["acts"], batch["factor"]], [4, 2])

    def final_stream(p, b):
      edits = self.edit.edits(p, b["factor"])
      if self.edit.kind == "LoRA" and self.edit.dropout > 0:
        edits["lora_rng"] = b["dropout_key"]
      return run_above(model_params, config, b["acts"], b["mask"], self.edit.after,
                       intervention_mask=b["positions"], remat=self.remat, **edits)

    h = jax.vmap(final_stream)(params, batch)  # [C, A * 4B, T, d]
    c, rows, t = h.shape[0], h.shape[1] // a, h.shape[2]
    split = lambda x: x.reshape(c * a, rows, *x.shape[2:])
    flat = lambda x: x.reshape(c * a, -1)
    nll = self.head.position_nll(model_params, split(h), {
        "tokens": split(batch["tokens"]), "mask": split(batch["mask"]), "loss_index": flat(batch["loss_index"]),
        "loss_valid": flat(batch["loss_valid"])})  # [C * A, W]
    if self.loss is None:  # the LM objective: each batch's mean NLL over its output tokens (HF's loss)
      valid = flat(batch["loss_valid"])
      per_batch = (jnp.sum(nll, -1) / jnp.maximum(jnp.sum(valid, -1), 1.0)).reshape(c, a)
      return jnp.sum(per_batch, -1) / a, {"lm": jnp.mean(per_batch, -1)}
    row = flat(batch["loss_index"]) // t
    policy = -jax.vmap(lambda n, r: jnp.zeros(rows).at[r].add(n))(nll, row).reshape(c, a, -1, 2)
    pairs = lambda x: x.reshape(c, a, -1, 2)  # [C, A, 2B, (winner, loser)]
    ref, length = pairs(batch["reference"]), pairs(batch["length"])
    losses = self.loss(policy[..., 0], policy[..., 1], ref[..., 0], ref[..., 1], length[..., 0], length[..., 1])
    weight = pairs(batch["weight"])[..., 0]
    per_batch = jnp.sum(losses * weight, -1) / jnp.maximum(jnp.sum(weight, -1), 1.0)  # [C, A]
    # upstream's reward accuracy: the winner's log-prob gain over the reference exceeds the loser's
    accuracy = jnp.sum((policy[..., 0] - ref[..., 0] > policy[..., 1] - ref[..., 1]) * weight, (1, 2))
    return jnp.sum(per_batch, -1) / a, {"accuracy": accuracy / jnp.maximum(jnp.sum(weight, (1, 2)), 1.0)}


@dataclasses.dataclass(frozen=True)
class PreferenceSetup:
  """One joint RePS run, ready for `train_jointly` (built by `prepare_preference`)."""

  edit: PreferenceEdit
  hyperparameters: dict[str, Any]
  concept_ids: np.ndarray
  init: dict[str, Array]
  arrays: dict[str, np.ndarray]  # per shared row [2U, ...]: concept sequences, then own sequences
  batches: list[StepBatch]
  objectives: tuple[PreferenceObjective, ...]
  optim: OptimConfig
  steps_per_epoch: int


def shared_arrays(edit: PreferenceEdit, examples: PreferenceExamples, length_norm: str) -> dict[str, np.ndarray]:
  """Tokens, masks, edit positions and loss lengths of every sequence: the concept rows, then the own rows."""
  both = (examples.concept, examples.own)
  cat = lambda name: np.concatenate([getattr(e, name) for e in both])
  mask, loss_mask = cat("attention_mask"), cat("loss_mask")
  if edit.kind == "LoReFT":
    t = np.arange(mask.shape[1])
    prompt = mask & (t[None] < cat("prompt_lengths")[:, None])
    positions = np.asarray(first_last_mask(jnp.asarray(prompt), *edit.positions))
  else:
    positions = cat("intervention_mask") if edit.kind == "vector" else mask
  return {"tokens": cat("tokens"), "mask": mask, "loss_mask": loss_mask, "positions": positions,
          "length": np.asarray(normalising_lengths(mask, loss_mask, length_norm))}


def factor_draws(factors, seed: int, concept_ids: np.ndarray, step: int, shape: tuple[int, ...]) -> np.ndarray:
  """[C, *shape] training factors, each drawn uniformly from `factors` (upstream's random.choice) with a
  generator of (seed, concept id, step), so a concept's draws do not depend on the others."""
  factors = np.asarray(factors, np.float32)
  return np.stack([factors[np.random.default_rng([seed, int(c), step]).integers(len(factors), size=shape)]
                   for c in concept_ids])


def prepare_preference(edit: PreferenceEdit, config: GemmaConfig, examples: PreferenceExamples,
                       acts: np.ndarray, reference: np.ndarray, hp: dict[str, Any], *, seed: int = 0,
                       init: dict[str, Any] | None = None, mesh: jax.sharding.Mesh | None = None
                       ) -> PreferenceSetup:
  """The joint run over every concept of `examples`: `acts` [2U, T, d] the frozen stream after `edit.after` of
  the `shared_arrays` rows, `reference` [2U] their unedited log-probs (`reference_logps`)."""
  edit.check(config)
  if hp["subtraction"] not in SUBTRACTIONS or (hp["subtraction"] == "null_out" and edit.kind != "vector"):
    raise AxjaxError(f"subtraction must be one of {', '.join(SUBTRACTIONS)} (null_out for a steering vector "
                     f"only), not {hp['subtraction']!r} for {edit.kind}")
  arrays = shared_arrays(edit, examples, hp["length_norm"])
  u, width = arrays["tokens"].shape
  if acts.shape != (u, width, config.hidden_size) or reference.shape != (u,):
    raise AxjaxError(f"acts {acts.shape} and reference log-probs {reference.shape} do not match the {u} "
                     f"sequences of width {width} and the model width {config.hidden_size}")
  ex = examples.concept
  concept_ids = ex.concept_ids
  keys = concept_keys(seed, concept_ids)
  stack = edit.init(config, jax.vmap(jax.random.fold_in, (0, None))(keys, 0)) if init is None else init
  plan, schedule, per_epoch = step_plan(ex.row_valid, concept_ids, hp, seed)
  c, a, b = plan[0][0].shape
  offset = len(ex.tokens)  # own rows follow the concept rows
  lm = hp["loss_type"] == LM
  per_example = 1 if lm else 4
  micro, factors = [], []
  for step, (positions, weight) in enumerate(plan):
    concept_row = ex.shared_rows(positions.reshape(c, a * b)).reshape(c, a, b)
    own_row = examples.own.shared_rows(positions.reshape(c, a * b)).reshape(c, a, b) + offset
    draws = factor_draws(hp["factors"], seed, concept_ids, step, (a, b, per_example))
    if lm:  # upstream's Concept* models: the steered concept response alone
      rows, factor = concept_row[..., None], draws
    else:
      rows = np.stack([concept_row, own_row, own_row, concept_row], -1)  # add (y_c over y), sub (y over y_c)
      sub = np.zeros_like(draws[..., 2:]) if hp["subtraction"] == "null_out" else -draws[..., 2:]
      factor = np.concatenate([draws[..., :2], sub], -1)
    micro.append((rows.reshape(c * a, b * per_example),
                  np.repeat(weight, per_example, -1).reshape(c * a, b * per_example)))
    factors.append(factor.reshape(c, a * b * per_example))
  packed = batching.packed_width(arrays["loss_mask"], micro)
  dropout_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
  batches = []
  for step, ((rows, weight), factor) in enumerate(zip(micro, factors)):
    index, valid = batching.packed_loss_positions(arrays["loss_mask"], rows, weight, packed)
    extra = {"loss_index": index.reshape(c, a, packed), "loss_valid": valid.reshape(c, a, packed), "factor": factor}
    if edit.kind == "LoRA" and edit.dropout > 0:
      extra["dropout_key"] = np.asarray(jax.random.key_data(
          jax.vmap(jax.random.fold_in, (0, None))(dropout_keys, step)))
    batches.append(StepBatch(rows.reshape(c, -1), weight.reshape(c, -1), extra))
  mesh = mesh or sharding.make_mesh()
  groups = mesh.shape[sharding.CONCEPTS]
  pooled = batching.pooled_rows([s.extra["loss_valid"].reshape(c * a, packed) for s in batches],
                                sharding.concept_multiple(mesh, c) * a, groups)
  loss = None if lm else PreferenceLoss(hp["loss_type"], hp.get("beta", 1.0))
  objectives = tuple(PreferenceObjective(edit, UpperModel(config, config.num_layers - 1, False, pooled, groups,
                                                          chunk), loss, a, remat) for remat, chunk in MEMORY_LADDER)
  optim = OptimConfig(lr=hp["lr"], total_steps=schedule, weight_decay=hp["weight_decay"],
                      clip_norm=hp["max_grad_norm"] or None)
  arrays = {**{k: arrays[k] for k in ("tokens", "mask", "positions", "length")}, "acts": acts,
            "reference": reference.astype(np.float32)}
  return PreferenceSetup(edit, hp, concept_ids, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), stack), arrays,
                         batches, objectives, optim, per_epoch)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _reference_batch(model_params, acts, mask, tokens, loss_mask, after: int, config: GemmaConfig):
  h = run_above(model_params, config, acts, mask, after)
  nll = token_nll(model_params, config, h[:, :-1].reshape(-1, h.shape[-1]), tokens[:, 1:].reshape(-1))
  return -jnp.sum(nll.reshape(loss_mask.shape[0], -1) * loss_mask[:, 1:], -1)


def reference_logps(model_params, config: GemmaConfig, acts: np.ndarray, arrays: dict[str, np.ndarray],
                    after: int, batch_size: int = 8) -> np.ndarray:
  """[U] each sequence's summed log-probs of its response tokens under the unedited model, from its frozen
  stream after layer `after`."""
  out = []
  for start in range(0, len(acts), batch_size):
    part = slice(start, start + batch_size)
    out.append(np.asarray(_reference_batch(model_params, acts[part], arrays["mask"][part],
                                           arrays["tokens"][part], arrays["loss_mask"][part], after, config)))
  return np.concatenate(out)


def train_preference(edit: PreferenceEdit, model_params, config: GemmaConfig, examples: PreferenceExamples,
                     acts: np.ndarray, hp: dict[str, Any], *, seed: int = 0, init: dict[str, Any] | None = None,
                     mesh: jax.sharding.Mesh | None = None,
                     progress: Callable[[int, dict[str, np.ndarray]], None] | None = None,
                     checkpoint_dir: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Every concept's edit trained jointly on its preference pairs: the params stack [C, ...] and the training
  record {"loss", "accuracy" (or "lm"): [steps, C]}. With `checkpoint_dir`, the state is saved every epoch and a
  rerun with the same settings resumes (`EpochCheckpoint`)."""
  arrays = shared_arrays(edit, examples, hp["length_norm"])
  reference = (np.zeros(len(acts), np.float32) if hp["loss_type"] == LM else
               reference_logps(model_params, config, acts, arrays, edit.after))
  setup = prepare_preference(edit, config, examples, acts, reference, hp, seed=seed, init=init, mesh=mesh)
  checkpoint = None
  if checkpoint_dir is not None:
    settings = {**hp, "edit": dataclasses.asdict(edit), "seed": seed, "concept_ids": setup.concept_ids.tolist(),
                "custom_init": init is not None}
    checkpoint = EpochCheckpoint(checkpoint_dir, setup.steps_per_epoch, json.loads(json.dumps(settings)))
  params, record = train_jointly(setup.optim, setup.objectives, setup.init,
                                 {k: jnp.asarray(v) for k, v in setup.arrays.items()}, setup.batches,
                                 frozen=model_params, progress=progress, checkpoint=checkpoint, mesh=mesh)
  return {k: np.asarray(v) for k, v in params.items()}, record
