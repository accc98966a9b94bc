"""Trains one method for every concept of a dataset and returns its dictionary.

The frozen model runs once up to layer L over each set of unique example texts (`ActivationCache`); every
method and epoch reuses those activations. Gradient-trained methods train all concepts in one compiled step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from axjax import sharding
from axjax.data import batching, examples as data_examples
from axjax.data.axbench_format import AxbenchData
from axjax.dictionary import Dictionary
from axjax.errors import AxjaxError
from axjax.loading.load import LoadedModel
from axjax.methods import (activations, adapter_methods, attribution, bow, closed_form, objectives,
                           preference_methods, prompting, sae_methods, token_moments)
from axjax.methods.activations import layer_activations
from axjax.methods.joint_training import OptimConfig, StepBatch, train_jointly
from axjax.methods.training_checkpoint import EpochCheckpoint
from axjax.methods.registry import MethodSpec, hyperparameters, method

Progress = Callable[[str, int, int], None]  # (stage, done, total)
_CONCEPT_CHUNK = 4  # concepts whose gathered token activations LAT holds at once
_MOMENT_ROWS = 16  # example rows per batch of the moments pass
DEAD_LATENT_REMEDIES = ("none", "diffmean")


@dataclasses.dataclass
class ActivationCache:
  """Layer-L activations of each example set, computed on first use and kept for the other methods."""

  model: LoadedModel
  data: AxbenchData
  layer: int
  progress: Progress | None = None
  concept_ids: tuple[int, ...] | None = None  # train only these concepts (default: all)
  max_examples: int | None = None  # per concept, half positives and half negatives (AxBench's scaling sweep)
  mesh: jax.sharding.Mesh | None = None  # devices that share the work (default: every device, concept axis)
  sae: Any = None  # the GemmaScope SAE (`sae.Sae`) whose features the SAE methods choose from
  sae_features: dict[int, int] | None = None  # concept id -> SAE feature for method SAE (else the metadata's)
  writer: Any = None  # the LLM that writes PromptSteering's prompts (`prompting.Writer`); None: the fallback
  _sets: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.mesh = self.mesh or sharding.make_mesh()

  @property
  def concepts(self):
    """The concepts this cache trains, in order (`concept_ids`, or every concept of the data)."""
    return self.data.concepts if self.concept_ids is None else [self.data.concept(c) for c in self.concept_ids]

  @functools.cached_property
  def placed_params(self):
    """The frozen model's weights placed on the mesh (split over its model axis), once."""
    return sharding.place_frozen(self.model.params, self.mesh)

  def tokenised(self, kind: str):
    """'binarized', 'lm_all' (positives and negatives) or 'lm_positive' examples, tokenised once."""
    key = ("tokens", kind)
    if key not in self._sets:
      tok = self.model.tokenizer
      subset = dict(concept_ids=self.concept_ids, max_examples=self.max_examples)
      self._sets[key] = {
          "binarized": lambda: data_examples.binarized_examples(self.data, tok, **subset),
          "lm_all": lambda: data_examples.lm_examples(self.data, tok, train_on_negative=True, positions="all",
                                                      **subset),
          "lm_positive": lambda: data_examples.lm_examples(self.data, tok, positions="all", **subset),
      }[kind]()
    return self._sets[key]

  def _report(self, kind: str, total: int):
    return None if self.progress is None else functools.partial(self.progress, f"activations ({kind})",
                                                                total=total)

  def examples(self, kind: str, layer: int | None = None):
    """The `tokenised(kind)` examples and their activations [U, T, d] after `layer` (default L), computed once."""
    layer = self.layer if layer is None else layer
    key = kind if layer == self.layer else (kind, layer)
    if key not in self._sets:
      ex = self.tokenised(kind)
      acts = layer_activations(self.placed_params, self.model.config, ex.tokens, ex.attention_mask, layer,
                               progress=self._report(kind, len(ex.tokens)), mesh=self.mesh)
      self._sets[key] = (ex, acts)
    return self._sets[key]

  def moments(self) -> token_moments.TokenMoments:
    """DiffMean's and PCA's statistics of the binarized examples, computed once: from the cached activations
    if another method needed them, else in an activation pass that keeps none."""
    if "moments" not in self._sets:
      ex = self.tokenised("binarized")
      if "binarized" in self._sets:
        acts = self._sets["binarized"][1]
        batches = ((rows, acts[rows], ex.score_mask[rows]) for rows in np.array_split(
            np.arange(len(acts)), max(1, len(acts) // _MOMENT_ROWS)))
      else:
        batches = ((rows, activations.residual(self.placed_params, self.model.config, tokens, mask, self.layer),
                    score) for rows, (tokens, mask, score) in activations.placed_batches(
                        [ex.tokens, ex.attention_mask, ex.score_mask], ex.attention_mask, _MOMENT_ROWS,
                        activations.WIDTH_MULTIPLE, self.mesh, self._report("binarized", len(ex.tokens))))
      self._sets["moments"] = token_moments.accumulate(batches, token_moments.membership(ex, len(ex.tokens)),
                                                       self.model.config.hidden_size)
    return self._sets["moments"]


def example_set(name: str) -> str | None:
  """The example set (an `ActivationCache.examples` kind, after "@" a layer other than L) whose activations
  method `name` keeps; None: none (Random needs no examples, DiffMean and PCA stream `ActivationCache.moments`,
  BoW, IG/IxG and prompting read texts or final states, SFT trains in the steering stage)."""
  spec = method(name)
  if spec.kind == "adapter":
    return f"lm_positive@{spec.name}"  # below the adapters' first layer
  if spec.kind == "preference":
    return "preference"  # prompt + y_c and prompt + y of every positive, below the edit (`preference_methods`)
  if spec.kind != "direction":
    return None
  return {"Random": None, "DiffMean": None, "PCA": None, "ReFT-r1": "lm_all", "SSV": "lm_positive"}.get(
      spec.name, "binarized")


def _lat(ex, acts: np.ndarray, seed: int) -> np.ndarray:
  """LAT directions [C, d], a few concepts at a time to bound memory."""
  out = []
  for start in range(0, len(ex.concept_ids), _CONCEPT_CHUNK):
    index = ex.index[start:start + _CONCEPT_CHUNK]
    c, n = index.shape
    a = acts[index].reshape(c, -1, acts.shape[-1]).astype(np.float32)
    valid = (ex.score_mask[index] & ex.row_valid[start:start + c, :, None]).reshape(c, -1)
    labels = np.broadcast_to(ex.labels[start:start + c, :, None], (c, n, acts.shape[1])).reshape(c, -1)
    out.append(closed_form.lat(a, valid, labels, closed_form.concept_keys(seed, ex.concept_ids[start:start + c])))
  return np.concatenate([np.asarray(w) for w in out])


def _row_labels(ex) -> np.ndarray:
  """Label of each shared row: 1 if it is some concept's positive (positives belong to one concept)."""
  labels = np.zeros(len(ex.tokens), np.int32)
  labels[ex.index[ex.labels == 1]] = 1
  return labels


@dataclasses.dataclass(frozen=True)
class FitResult:
  """A method's dictionary and, for gradient-trained methods, how training went."""

  dictionary: Dictionary
  record: pd.DataFrame | None = None  # per concept and step: epoch, loss and the objective's parts
  dead: np.ndarray | None = None  # [C] bool: the ReLU score never fired on a training token in the last epoch
  remedied: np.ndarray | None = None  # [C] bool: dead after AxBench's training, retrained by the remedy


def _record_frame(record: dict[str, np.ndarray], concept_ids: np.ndarray, steps_per_epoch: int) -> pd.DataFrame:
  """The [steps, C] training record as a long table, one row per (concept, step) that trained."""
  steps, c = record["loss"].shape
  frame = pd.DataFrame({"concept_id": np.tile(concept_ids, steps).astype(np.int64),
                        "step": np.repeat(np.arange(steps), c), "epoch": np.repeat(np.arange(steps) // steps_per_epoch, c),
                        **{k: v.reshape(-1) for k, v in record.items()}})
  return frame[np.isfinite(frame["loss"])].reset_index(drop=True)


def _dead_latents(record: dict[str, np.ndarray], steps_per_epoch: int) -> np.ndarray:
  """[C] bool: no intervened training token had a positive latent at any step of the last epoch."""
  last = record["fired"][-steps_per_epoch:]
  return np.nansum(last, axis=0) == 0


# Hyperparameters a sweep may vary inside one compiled step, and the per-concept step array each becomes.
SWEEPABLE = {"lr": "lr_scale", "coeff_latent_l1_loss": "coeff_l1", "coeff_l1_loss": "coeff_l1"}


def _grid_arrays(grid: Sequence[dict[str, Any]], hp: dict[str, Any], concepts: int) -> dict[str, np.ndarray]:
  """Per virtual concept (grid point major, concept minor) the swept values as `joint_step` extras: the
  learning rate as a factor on the base one, loss coefficients as they are."""
  out = {}
  for key in {k for point in grid for k in point}:
    values = np.array([float(point.get(key, hp[key])) for point in grid], np.float32)
    out[SWEEPABLE[key]] = np.repeat(values / hp[key] if key == "lr" else values, concepts)
  return out


def _train(spec: MethodSpec, hp: dict[str, Any], cache: ActivationCache, seed: int, progress: Progress | None,
           checkpoint_dir: str | None, subset: np.ndarray | None = None, init: np.ndarray | None = None,
           grid: Sequence[dict[str, Any]] = ({},)) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
  """Trains a gradient-based method for the concepts at positions `subset` (default all) jointly, at every
  point of `grid` (values of SWEEPABLE hyperparameters) at once: each concept trains once per point, on the
  same batches, as a separate run with those values would.

  Returns the weights [G * C, d] and the training record {name: [steps, G * C]} (grid point major), and the
  steps per epoch. `init` replaces AxBench's initial weights.
  """
  config = cache.model.config
  if spec.name == "LinearProbe":
    ex, acts = cache.examples("binarized")
    arrays = {"acts": acts, "position_mask": ex.probe_mask.astype(np.float32), "label": _row_labels(ex)}
    loss = objectives.ProbeObjective(hp["coeff_l1_loss"], saturating=hp["loss"] == "axbench")
    optim = dict(unit_norm_key="w")
  else:
    ex, acts = cache.examples(example_set(spec.name))
    arrays = {"acts": acts, "mask": ex.attention_mask, "tokens": ex.tokens,
              "position_mask": ex.intervention_mask.astype(np.float32)}
    if spec.name == "ReFT-r1":
      arrays["pad_acts"] = acts[np.arange(len(acts)), ex.attention_mask.sum(axis=1)]  # each row's first pad
      loss = functools.partial(objectives.ReftR1Objective, topk=hp["topk"], coeff_l1=hp["coeff_latent_l1_loss"],
                               pad_in_topk=hp["topk_candidates"] == "axbench")
      optim = dict(clip_norm=1.0, unit_norm_key="w")
    else:
      loss = objectives.SsvObjective
      optim = {}
  subset = np.arange(len(ex.concept_ids)) if subset is None else subset
  concept_ids, row_valid = ex.concept_ids[subset], ex.row_valid[subset]
  if init is None and spec.name == "LinearProbe":
    bound = 1.0 / np.sqrt(config.hidden_size)  # torch.nn.Linear's default initialisation
    init = jax.vmap(lambda k: jax.random.uniform(k, (config.hidden_size,), jnp.float32, -bound, bound))(
        closed_form.concept_keys(seed, concept_ids))
  elif init is None:
    init = np.full((len(subset), config.hidden_size), 0.01, np.float32)  # AxBench's fill_(0.01)
  per_epoch = batching.steps_per_epoch(row_valid, hp["batch_size"])
  steps = hp["n_epochs"] * per_epoch
  cfg = OptimConfig(lr=hp["lr"], total_steps=steps, weight_decay=hp["weight_decay"], **optim)
  steps_rows = [(ex.shared_rows(b.positions, subset), b.weight)
                for b in batching.minibatches(row_valid, hp["batch_size"], hp["n_epochs"], seed, concept_ids)]
  if spec.name == "LinearProbe":
    batches = [StepBatch(rows, weight) for rows, weight in steps_rows]
  else:
    width = batching.packed_width(ex.loss_mask, steps_rows)
    batches = [StepBatch(rows, weight, dict(zip(("loss_index", "loss_valid"), batching.packed_loss_positions(
        ex.loss_mask, rows, weight, width)))) for rows, weight in steps_rows]
  swept = len(grid) > 1 or bool(grid[0])
  if swept:
    tile = lambda a: np.concatenate([np.asarray(a)] * len(grid))
    values = _grid_arrays(grid, hp, len(subset))
    batches = [StepBatch(tile(b.rows), tile(b.weight), {**{k: tile(v) for k, v in b.extra.items()}, **values})
               for b in batches]
    init = tile(init)
  if spec.name != "LinearProbe":
    groups = cache.mesh.shape[sharding.CONCEPTS]
    pooled = batching.pooled_rows([b.extra["loss_valid"] for b in batches],
                                  sharding.concept_multiple(cache.mesh, len(batches[0].rows)), groups)
    loss = [loss(objectives.UpperModel(config, cache.layer, remat, pooled, groups, chunk))
            for remat, chunk in objectives.MEMORY_LADDER]
  checkpoint = None
  if checkpoint_dir is not None:
    settings = {**hp, "seed": seed, "concept_ids": concept_ids.tolist(), **({"grid": list(grid)} if swept else {})}
    checkpoint = EpochCheckpoint(checkpoint_dir, per_epoch, json.loads(json.dumps(settings)))
  report = None if progress is None else (lambda step, _: progress(f"train {spec.name}", step + 1, steps))
  trained, record = train_jointly(cfg, loss, {"w": jnp.asarray(init, jnp.float32)},
                                  {k: jnp.asarray(v) for k, v in arrays.items()}, batches,
                                  frozen=cache.placed_params, progress=report, checkpoint=checkpoint,
                                  mesh=cache.mesh)
  return np.array(trained["w"]), record, per_epoch


def fit_method(name: str, cache: ActivationCache, *, overrides: dict[str, Any] | None = None, seed: int = 0,
               progress: Progress | None = None, checkpoint_dir: str | None = None,
               dead_latent_remedy: str = "none") -> FitResult:
  """The dictionary of method `name` for every concept of `cache.data` at `cache.layer`.

  Gradient-trained methods save their state after every epoch under `checkpoint_dir` (if given) and resume
  from it. `dead_latent_remedy="diffmean"` retrains, from the concept's DiffMean direction, every concept whose
  ReLU latent ended dead (AxBench's behaviour is "none").
  """
  spec = method(name)
  if dead_latent_remedy not in DEAD_LATENT_REMEDIES:
    raise AxjaxError(f"unknown dead-latent remedy {dead_latent_remedy!r}: choose from "
                     f"{', '.join(DEAD_LATENT_REMEDIES)}")
  config = cache.model.config
  hp = hyperparameters(spec, config, overrides)
  concepts = cache.concepts
  biases = np.zeros(len(concepts), np.float32)
  extras = {}
  frame = dead = remedied = None
  if spec.name == "Random":
    ids = [c.concept_id for c in concepts]
    weights = closed_form.random_directions(ids, config.hidden_size, seed)
    bound = 1.0 / np.sqrt(config.hidden_size)  # AxBench keeps torch.nn.Linear's random bias
    biases = np.array([np.random.default_rng([seed, c]).uniform(-bound, bound) for c in ids], np.float32)
  elif spec.kind in KIND_FITS:
    extras, record, per_epoch = KIND_FITS[spec.kind](spec.name, cache, hp, seed, progress, checkpoint_dir)
    if spec.kind == "adapter":
      hp = adapter_methods.resolved(spec.name, config, hp)
    elif spec.kind == "preference" and "layers" in hp:
      hp = preference_methods.resolved(spec.name, config, hp, cache.layer)
    if record is not None:
      frame = _record_frame(record, np.array([c.concept_id for c in concepts]), per_epoch)
    weights = extras.pop("weights", None)  # a kind's rank-1 directions (the RePS vectors) and their biases
    biases = extras.pop("biases", biases)
  elif spec.trained:
    part = lambda label: None if checkpoint_dir is None else os.path.join(checkpoint_dir, label)
    weights, record, per_epoch = _train(spec, hp, cache, seed, progress, part("axbench"))
    ids = np.array([c.concept_id for c in concepts])
    frame = _record_frame(record, ids, per_epoch)
    if "fired" in record:
      dead = _dead_latents(record, per_epoch)
      remedied = np.zeros_like(dead)
      if dead_latent_remedy == "diffmean" and dead.any():
        subset = np.flatnonzero(dead)
        start = token_moments.diffmean(cache.moments())[subset]
        retrained, record2, _ = _train(spec, hp, cache, seed, progress, part("remedy"), subset, start)
        weights[subset] = retrained
        frame = pd.concat([frame[~frame["concept_id"].isin(ids[subset])],
                           _record_frame(record2, ids[subset], per_epoch).assign(remedy="diffmean")])
        remedied[subset] = True
        dead[subset] = _dead_latents(record2, per_epoch)
  elif spec.name in sae_methods.METHODS:
    chosen = sae_methods.select_features(spec.name, cache)
    weights, biases, extras = chosen["weights"], chosen["biases"], chosen["extras"]
  elif spec.name == "LAT":
    weights = _lat(*cache.examples("binarized"), seed)
  else:
    weights = {"DiffMean": token_moments.diffmean, "PCA": token_moments.pca}[spec.name](cache.moments())
  hp = {**hp, "seed": seed, **({"dead_latent_remedy": dead_latent_remedy} if dead is not None else {})}
  return FitResult(_dictionary(spec.name, cache, weights, biases, hp, extras), frame, dead, remedied)


# How the methods of each kind other than "direction" fit: (name, cache, hp, seed, progress, checkpoint_dir) ->
# (extras [C, ...], training record {name: [steps, C]} or None, steps per epoch); "weights" and "biases" among the
# extras become the dictionary's. SFT trains while steering.
KIND_FITS = {"adapter": adapter_methods.fit_adapters, "bow": bow.fit_concepts,
             "attribution": attribution.fit_concepts, "prompt": prompting.fit_concepts,
             "preference": preference_methods.fit_preference,
             "sft": lambda *_: ({}, None, 0)}


def _dictionary(name: str, cache: ActivationCache, weights: np.ndarray, biases: np.ndarray,
                hp: dict[str, Any], extras: dict[str, np.ndarray] | None = None) -> Dictionary:
  concepts = cache.concepts
  return Dictionary(weights=weights, biases=biases, concept_ids=tuple(c.concept_id for c in concepts),
                    concept_names=tuple(c.name for c in concepts), method=name, model_name=cache.model.name,
                    layer=cache.layer, hyperparameters=hp, extras=extras or {},
                    width=cache.model.config.hidden_size)


def sweep_points(spec: MethodSpec, hp: dict[str, Any], grid: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The grid with its values typed as the method's hyperparameters; refuses what cannot be swept."""
  if not spec.trained:
    raise AxjaxError(f"{spec.name} is not trained by gradient descent: it has nothing to sweep")
  if spec.kind != "direction":
    raise AxjaxError(f"{spec.name} cannot be swept inside one training step (only rank-1 methods can); run other "
                     "values as separate runs")
  points = []
  for point in grid:
    bad = [k for k in point if k not in SWEEPABLE or k not in hp]
    if bad:
      sweepable = sorted(k for k in SWEEPABLE if k in hp)
      raise AxjaxError(f"{spec.name}.{bad[0]} cannot be swept inside one training step (sweepable: "
                       f"{', '.join(sweepable)}); run other values as separate runs")
    try:
      points.append({k: type(hp[k])(v) for k, v in point.items()})
    except ValueError:
      raise AxjaxError(f"{spec.name} sweep point {point} has a value that is not a number") from None
  return points


def fit_sweep(name: str, cache: ActivationCache, grid: Sequence[dict[str, Any]], *,
              overrides: dict[str, Any] | None = None, seed: int = 0, progress: Progress | None = None,
              checkpoint_dir: str | None = None) -> list[FitResult]:
  """Method `name` trained at every point of `grid` (e.g. [{"lr": 0.005}, {"lr": 0.01}]) in one compiled step:
  each concept once per point, equal to separate runs with those values (tested). One FitResult per point.

  Only SWEEPABLE hyperparameters may vary (the others change shapes or the schedule: run them separately).
  """
  spec = method(name)
  hp = hyperparameters(spec, cache.model.config, overrides)
  points = sweep_points(spec, hp, grid)
  weights, record, per_epoch = _train(spec, hp, cache, seed, progress, checkpoint_dir, grid=points)
  ids = np.array([concept.concept_id for concept in cache.concepts])
  c = len(ids)
  out = []
  for g, point in enumerate(points):
    part = {k: v[:, g * c:(g + 1) * c] for k, v in record.items()}
    dead = _dead_latents(part, per_epoch) if "fired" in part else None
    out.append(FitResult(_dictionary(spec.name, cache, weights[g * c:(g + 1) * c], np.zeros(c, np.float32),
                                     {**hp, **point, "seed": seed}),
                         _record_frame(part, ids, per_epoch), dead,
                         None if dead is None else np.zeros_like(dead)))
  return out


def best_of_sweep(results: Sequence[FitResult], labels: Sequence[str]) -> FitResult:
  """Per concept, the grid point whose last epoch had the lowest mean of the data term of its loss (the LM
  loss for ReFT-r1 and SSV, the BCE for the probe; the swept penalty left out): chosen on training data only.

  The dictionary's hyperparameters name each concept's point ("sweep_selected"); its record holds each
  concept's rows of its chosen point, with a `grid_point` column.
  """
  first = results[0]
  term = next(k for k in ("lm", "bce", "loss") if k in first.record)
  ids = list(first.dictionary.concept_ids)
  last = lambda r: r.record[r.record["epoch"] == r.record["epoch"].max()].groupby("concept_id")[term].mean()
  chosen = np.stack([last(r).reindex(ids).to_numpy() for r in results]).argmin(axis=0)
  pick = lambda arrays: None if arrays[0] is None else np.array([arrays[g][c] for c, g in enumerate(chosen)])
  swept = {k for k in SWEEPABLE if len({r.dictionary.hyperparameters.get(k) for r in results}) > 1}
  hp = {**first.dictionary.hyperparameters, **{k: "swept" for k in swept},
        "sweep_selected": [labels[g] for g in chosen]}
  frame = pd.concat([results[g].record[results[g].record["concept_id"] == cid].assign(grid_point=labels[g])
                     for cid, g in zip(ids, chosen)], ignore_index=True)
  dictionary = first.dictionary.replace(weights=pick([r.dictionary.weights for r in results]), hyperparameters=hp)
  return FitResult(dictionary, frame, pick([r.dead for r in results]), pick([r.remedied for r in results]))
