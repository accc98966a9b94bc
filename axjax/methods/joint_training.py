"""Trains every concept's parameters together: one compiled step, `vmap` over a leading concept axis.

Each concept has its own batch, gradient clipping, weight renormalisation and optimizer state, so training C
concepts jointly computes exactly what C separate runs would (AxBench trains them one at a time).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, NamedTuple, Sequence

from absl import logging
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from axjax import processes, sharding
from axjax.methods.training_checkpoint import EpochCheckpoint

PyTree = Any
# loss(params of one concept, its batch [B, ...], progress in [0, 1), frozen model params)
#   -> (scalar loss, {name: scalar} parts recorded per step). It may also have a `joint` method taking params
#   and batch with a leading concept axis and returning (losses [C], {name: [C]}): the step then uses that.
LossFn = Callable[[PyTree, dict[str, jax.Array], jax.Array, PyTree], tuple[jax.Array, dict[str, jax.Array]]]
_EPS = float(jnp.finfo(jnp.float32).eps)  # AxBench's set_decoder_norm_to_unit_norm: w / (|w| + eps)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear decay to 0 and no warmup (AxBench's `get_scheduler("linear")`), per concept."""

  lr: float
  total_steps: int
  weight_decay: float = 0.0
  clip_norm: float | None = None  # clip each concept's gradient to this global norm
  unit_norm_key: str | None = None  # AxBench's LsReFT/Probe: renormalise this [d] weight, drop its radial gradient


def _optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  schedule = optax.linear_schedule(cfg.lr, 0.0, max(cfg.total_steps, 1))
  return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.weight_decay)


def init_state(cfg: OptimConfig, params: PyTree) -> PyTree:
  """Optimizer state with the same leading concept axis as `params`."""
  return jax.vmap(_optimizer(cfg).init)(params)


def _joint_grads(loss_fn: LossFn, params, batch, progress, frozen):
  """Every concept's loss parts and gradient. An objective with a `joint` form (losses [C] from params and
  batch [C, ...], e.g. pooling output rows across concepts) is differentiated as one sum, which gives each
  concept the gradient of its own loss; any other is vmapped."""
  losses = getattr(loss_fn, "joint", None) or jax.vmap(loss_fn, in_axes=(0, 0, None, None))

  def total(params):
    loss, parts = losses(params, batch, progress, frozen)
    return jnp.sum(loss), {"loss": loss, **parts}

  (_, values), grads = jax.value_and_grad(total, has_aux=True)(params)
  return values, grads


def _concept_update(cfg: OptimConfig, params, opt_state, grads, batch):
  """One concept's optimizer step from its gradient (clipped, projected, scaled as AxBench does)."""
  original = params
  if cfg.clip_norm is not None:
    norm = optax.tree.norm(grads)
    grads = jax.tree.map(lambda g: g * jnp.minimum(1.0, cfg.clip_norm / (norm + 1e-6)), grads)
  if cfg.unit_norm_key is not None:  # the order AxBench uses: normalise w, then project its gradient
    w = params[cfg.unit_norm_key]
    w = w / (jnp.linalg.norm(w) + _EPS)
    g = grads[cfg.unit_norm_key]
    params = {**params, cfg.unit_norm_key: w}
    grads = {**grads, cfg.unit_norm_key: g - jnp.dot(g, w) * w}
  updates, new_state = _optimizer(cfg).update(grads, opt_state, params)
  if "lr_scale" in batch:  # a hyperparameter sweep: this concept's learning rate relative to cfg.lr
    updates = jax.tree.map(lambda u: u * batch["lr_scale"], updates)
  new_params = optax.apply_updates(params, updates)
  # A concept with fewer examples than the others has filler steps (all weights 0): leave it untouched there.
  active = jnp.sum(batch["weight"]) > 0
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)
  return keep(new_params, original), keep(new_state, opt_state)


class StepBatch(NamedTuple):
  """One step for every concept: rows [C, B] of the shared examples, their weights [C, B] (0 on filler
  entries), and per-step arrays [C, ...] computed on the host (e.g. packed loss positions)."""

  rows: Any
  weight: Any
  extra: dict[str, Any] = {}


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def joint_step(cfg: OptimConfig, loss_fn: LossFn, params, opt_state, examples, indices, weights, extra, step,
               frozen):
  """One optimizer step for every concept. indices/weights [C, B] pick each concept's rows of `examples`;
  `extra` holds per-step arrays [C, ...] that join each concept's batch as they are.

  `frozen` (the base model's params, or None) is an argument, not a closure, so it is never baked into the
  compiled program as a constant.
  """
  chex.assert_equal_shape([indices, weights])
  batch = jax.tree.map(lambda a: a[indices], examples)  # [C, B, ...]
  batch.update(extra, weight=weights)
  values, grads = _joint_grads(loss_fn, params, batch, step / max(cfg.total_steps, 1), frozen)
  params, opt_state = jax.vmap(functools.partial(_concept_update, cfg))(params, opt_state, grads, batch)
  return params, opt_state, values


def host_memory_budget() -> int:
  """Half the host memory available now (process 0's, so every process plans and compiles the same)."""
  return processes.agreed(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)


def memory_budget() -> int:
  """Bytes one training step may use beyond its arguments: 90% of an accelerator's memory limit, or
  `host_memory_budget()` on the CPU (process 0's either way, so every process compiles the same step)."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and "bytes_limit" in stats:
    return processes.agreed(int(0.9 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))))
  return host_memory_budget()


def _padded(tree: PyTree, size: int) -> PyTree:
  """Every leaf's leading (concept) axis padded to `size` with copies of its first entry."""
  return jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)]), tree)


def _step_arrays(batch: StepBatch, mesh: jax.sharding.Mesh | None = None, size: int | None = None) -> tuple:
  """A step's rows, weights and extra arrays as `joint_step` takes them: padded to `size` concepts (filler
  concepts get weight 0, so they do not train) and split along the concept axis of `mesh`."""
  arrays = (np.asarray(batch.rows), np.asarray(batch.weight, np.float32),
            {k: np.asarray(v) for k, v in batch.extra.items()})
  if mesh is None:
    return jax.tree.map(jnp.asarray, arrays)
  rows, weight, extra = _padded(arrays, size)
  weight[len(batch.weight):] = 0.0
  return jax.device_put((rows, weight, extra), sharding.split_concepts(mesh))


def compile_step(cfg: OptimConfig, loss_fn: LossFn, params, opt_state, examples, batch: StepBatch, frozen,
                 mesh: jax.sharding.Mesh | None = None, size: int | None = None):
  """`joint_step` compiled ahead of time for these shapes (and, with a mesh, `size` concepts split over it):
  its memory analysis is known before it runs."""
  return joint_step.lower(cfg, loss_fn, params, opt_state, examples, *_step_arrays(batch, mesh, size), 0,
                          frozen).compile()


def _fitting_step(cfg, loss_fns: Sequence[LossFn], params, opt_state, examples, batch, frozen, budget, mesh, size):
  """The compiled step of the first objective (the fastest first) whose temporaries and outputs fit `budget`
  (per device); the last one if none does."""
  for loss_fn in loss_fns:
    step = compile_step(cfg, loss_fn, params, opt_state, examples, batch, frozen, mesh, size)
    memory = step.memory_analysis()
    needed = memory.temp_size_in_bytes + memory.output_size_in_bytes
    if needed <= budget or loss_fn is loss_fns[-1]:
      logging.info("training step: %s, %.2f GB of temporaries and outputs (budget %.2f GB)", loss_fn,
                   needed / 1e9, budget / 1e9)
      return step


def train_jointly(cfg: OptimConfig, loss_fn: LossFn | Sequence[LossFn], params: PyTree,
                  examples: dict[str, jax.Array], batches: Sequence[StepBatch], frozen: PyTree = None,
                  progress: Callable[[int, dict[str, np.ndarray]], None] | None = None,
                  checkpoint: EpochCheckpoint | None = None, memory_limit: int | None = None,
                  mesh: jax.sharding.Mesh | None = None) -> tuple[PyTree, dict[str, np.ndarray]]:
  """Runs `joint_step` over `batches`, the concepts split over the concept axis of `mesh` (default: every
  device; the concept count is padded to a multiple of that axis with filler concepts that never train) and
  the frozen model over its model axis.

  `loss_fn` may be a sequence of equivalent objectives, fastest first (e.g. keeping activations, then
  recomputing them): the first whose compiled step fits `memory_limit` (default `memory_budget()`) trains.
  Returns the trained params [C, ...] and the training record: {"loss" and each of the objective's parts:
  [steps, C] float32}, entries of a concept's filler steps NaN. With a `checkpoint`, the state is saved after
  every epoch and a rerun continues from the last one saved, ending with exactly the numbers of an
  uninterrupted run.
  """
  loss_fns = tuple(loss_fn) if isinstance(loss_fn, (list, tuple)) else (loss_fn,)
  mesh = mesh or sharding.make_mesh()
  state = jax.tree.map(np.asarray, (params, init_state(cfg, params)))
  concepts = len(jax.tree.leaves(params)[0])
  size = sharding.concept_multiple(mesh, concepts)
  record: dict[str, list[np.ndarray]] = {}
  start = 0
  if checkpoint is not None and (saved := checkpoint.restore(state)) is not None:
    start, state, saved_record = saved
    record = {k: list(v) for k, v in saved_record.items()}
  params, opt_state = jax.device_put(_padded(state, size), sharding.split_concepts(mesh))  # our own copy
  examples = jax.device_put(examples, sharding.replicated(mesh))
  frozen = None if frozen is None else sharding.place_frozen(frozen, mesh)
  unpadded = lambda tree: jax.tree.map(lambda a: processes.to_host(a)[:concepts], tree)
  if start < len(batches):
    budget = memory_budget() if memory_limit is None else memory_limit
    step_fn = _fitting_step(cfg, loss_fns, params, opt_state, examples, batches[start], frozen, budget, mesh, size)
  for step in range(start, len(batches)):
    batch = batches[step]
    params, opt_state, values = step_fn(params, opt_state, examples, *_step_arrays(batch, mesh, size), step,
                                        frozen)
    # XLA may return the state split differently (e.g. over the model axis too); the compiled step takes it
    # as it was placed.
    params, opt_state = jax.device_put((params, opt_state), sharding.split_concepts(mesh))
    active = np.asarray(batch.weight).any(axis=1)
    values = {k: np.where(active, v, np.nan) for k, v in unpadded(values).items()}
    for k, v in values.items():
      record.setdefault(k, []).append(v.astype(np.float32))
    if checkpoint is not None and checkpoint.epoch_ends(step):
      checkpoint.save(step + 1, unpadded((params, opt_state)), {k: np.stack(v) for k, v in record.items()})
    if progress is not None:
      progress(step, values)
  return unpadded(params), {k: np.stack(v) for k, v in record.items()}
