"""AxBench's IntegratedGradients / InputXGradients detection baselines: a classifier head and attributions.

Classifier (AxBench's `models/ig.py`, one per concept): the frozen LM's final-layer state after the final norm
at an example's last real token -> Linear d->d/2 -> ReLU -> Linear d/2->2 -> softmax. In training, dropout 0.3
acts on the state and on the hidden layer (AxBench applies its one Dropout module at both places). The loss
is torch's CrossEntropyLoss applied to the softmax OUTPUT, so the probabilities are softmaxed a second time:
AxBench's double-softmax quirk, reproduced because it shapes what the head learns (the loss can never fall
below log(1 + e^-1), so the gradient never vanishes on confident examples).

Attributions are taken at the residual stream after layer L with respect to P(class 1) of each row's own
concept, with layers L+1..N-1 and the final norm rerun on the edited stream:
- InputXGradients: h * dP/dh.
- IntegratedGradients: (h - b) * mean_k dP/dh at b + (k / S)(h - b), k = 0..S-1 (S = 50, left Riemann sum), b
  the mean input-embedding row of 1000 random token ids (seeded here; AxBench draws new ids per example from
  torch's global RNG), broadcast to every position. The rows are the raw embedding table rows: AxBench's
  `get_input_embeddings()` returned them unscaled under the transformers of its time (Gemma's sqrt(d) scale was
  applied later, in the model's forward). AxBench runs one example at a time, five steps per pass; here the
  steps (in chunks, `jax.vmap`) and the examples are batched, in float32 rather than its bfloat16.
A token's detection score is s_t = sum_d |attr_{t,d}|; AxBench keeps positions from the chat prefix on.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from axjax import atomic_files, processes
from axjax.errors import AxjaxError
from axjax.methods.activations import WIDTH_MULTIPLE, placed_batches, residual_stream
from axjax.model.config import GemmaConfig
from axjax.model.layers import RMSNorm
from axjax.model.transformer import embed, frame_from_mask, layer_slice, run_layers

Array = jax.Array
Params = dict[str, Array]  # {"w1": [..., d, d/2], "b1": [..., d/2], "w2": [..., d/2, 2], "b2": [..., 2]}
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class ClassifierTraining:
  """AxBench's ig.yaml settings for 2B models (9B: grad_accum 8, n_epochs 72, lr 8e-5)."""

  batch_size: int = 18
  grad_accum: int = 2
  n_epochs: int = 24
  lr: float = 4e-4
  weight_decay: float = 2e-4
  dropout: float = 0.3
  seed: int = 42


@dataclasses.dataclass(frozen=True)
class IGConfig:
  """Integrated gradients: Riemann steps, steps per vmapped chunk (memory), baseline sample size and seed."""

  steps: int = 50
  step_chunk: int = 10
  baseline_tokens: int = 1000
  seed: int = 42


def init_classifiers(key: Array, num_concepts: int, hidden_size: int) -> Params:
  """Stacked heads [C, ...] initialised as torch.nn.Linear: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  half = hidden_size // 2
  shapes = {"w1": ((hidden_size, half), hidden_size), "b1": ((half,), hidden_size),
            "w2": ((half, 2), half), "b2": ((2,), half)}
  return {name: jax.random.uniform(k, (num_concepts,) + shape, jnp.float32, -1.0, 1.0) / math.sqrt(fan_in)
          for k, (name, (shape, fan_in)) in zip(jax.random.split(key, len(shapes)), shapes.items())}


def _dropout(key: Array, x: Array, rate: float) -> Array:
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def classifier_probs(mlp: Params, states: Array, dropout_key: Array | None = None, rate: float = 0.0) -> Array:
  """softmax(head(states)) [..., 2] of one concept's head on states [..., d]; dropout only with a key."""
  drop = dropout_key is not None and rate > 0.0
  k_in, k_hidden = jax.random.split(dropout_key) if drop else (None, None)
  h = _dropout(k_in, states.astype(jnp.float32), rate) if drop else states.astype(jnp.float32)
  z = jax.nn.relu(jnp.matmul(h, mlp["w1"], precision=_HIGHEST) + mlp["b1"])
  z = _dropout(k_hidden, z, rate) if drop else z
  return jax.nn.softmax(jnp.matmul(z, mlp["w2"], precision=_HIGHEST) + mlp["b2"], axis=-1)


def classifier_loss(mlp: Params, states: Array, labels: Array, weights: Array, dropout_key: Array | None = None,
                    rate: float = 0.0) -> Array:
  """sum_b weights_b * CE(softmax output treated as logits, label_b): AxBench's double-softmax loss (weights
  1/B give torch's batch mean)."""
  chex.assert_rank([states, labels, weights], [2, 1, 1])
  probs = classifier_probs(mlp, states, dropout_key, rate)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(probs, axis=-1), labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return jnp.sum(weights * nll)


def epoch_orders(concept_ids: Sequence[int], num_examples: int, training: ClassifierTraining) -> np.ndarray:
  """[C, epochs, N] int32: each concept's shuffled example order per epoch (DataLoader shuffle=True), seeded by
  (seed, concept id), so a concept trains alike in any chunk."""
  return np.stack([np.stack([rng.permutation(num_examples) for _ in range(training.n_epochs)])
                   for rng in (np.random.default_rng([training.seed, int(c)]) for c in concept_ids)]
                  ).astype(np.int32)


def step_plan(orders: np.ndarray, training: ClassifierTraining) -> tuple[np.ndarray, np.ndarray, int]:
  """AxBench's optimizer steps over one concept's orders [epochs, N]: rows and loss weights [S, accum * bs], and
  the linear schedule's length.

  Each epoch's mini-batches are grouped `grad_accum` at a time into an optimizer step, the last group possibly
  shorter; each batch's loss is its mean divided by grad_accum, so an example weighs 1 / (its batch size *
  grad_accum). The schedule decays over n_epochs * max(1, batches // grad_accum) steps (AxBench's count, which
  undercounts when the batches do not split evenly: the rate then stays 0 for the last steps, as in AxBench).
  """
  bs, accum = training.batch_size, training.grad_accum
  epochs, n = orders.shape
  batches = -(-n // bs)
  rows, weights = [], []
  for order in orders:
    for first in range(0, batches, accum):
      group_rows, group_weights = np.zeros(accum * bs, np.int32), np.zeros(accum * bs, np.float32)
      for slot, b in enumerate(range(first, min(first + accum, batches))):
        members = order[b * bs:(b + 1) * bs]
        group_rows[slot * bs:slot * bs + len(members)] = members
        group_weights[slot * bs:slot * bs + len(members)] = 1.0 / (len(members) * accum)
      rows.append(group_rows)
      weights.append(group_weights)
  return np.stack(rows), np.stack(weights), epochs * max(1, batches // accum)


@functools.partial(jax.jit, static_argnums=(6, 7))
def _train(mlp, states, labels, rows, weights, keys, training: ClassifierTraining, schedule_steps: int):
  optimizer = optax.adamw(optax.linear_schedule(training.lr, 0.0, schedule_steps), b1=0.9, b2=0.999, eps=1e-8,
                          weight_decay=training.weight_decay)

  def one_concept(mlp, states, labels, rows, weights, key):
    def step(carry, xs):
      mlp, opt_state = carry
      r, w, i = xs
      loss, grad = jax.value_and_grad(classifier_loss)(mlp, states[r], labels[r], w, jax.random.fold_in(key, i),
                                                       training.dropout)
      updates, opt_state = optimizer.update(grad, opt_state, mlp)
      return (optax.apply_updates(mlp, updates), opt_state), loss

    (mlp, _), losses = jax.lax.scan(step, (mlp, optimizer.init(mlp)), (rows, weights, jnp.arange(rows.shape[0])))
    return mlp, losses

  return jax.vmap(one_concept)(mlp, states, labels, rows, weights, keys)


def train_classifiers(states, labels, training: ClassifierTraining = ClassifierTraining(),
                      init: Params | None = None, concept_ids: Sequence[int] | None = None
                      ) -> tuple[Params, np.ndarray]:
  """Trains C concepts' heads together (vmapped) on precomputed `last_token_states` [C, N, d] and labels [C, N]
  (1 positive, 0 negative) with AxBench's AdamW, linear decay, batching and accumulation.

  `init`: stacked heads to start from (default: `init_classifiers` keyed by training.seed and concept id).
  `concept_ids` (default 0..C-1) key each concept's order, initialisation and dropout. Returns the heads
  stacked [C, ...] and each optimizer step's loss [C, steps]. Concepts with fewer examples than N go in a call
  of their own.
  """
  states, labels = np.asarray(states, np.float32), np.asarray(labels)
  if states.ndim != 3 or labels.shape != states.shape[:2] or not states.shape[1]:
    raise AxjaxError(f"states must be [C, N, d] with N > 0 and labels [C, N], got {states.shape} and {labels.shape}")
  if not np.isin(labels, (0, 1)).all():
    raise AxjaxError("classifier labels must be 0 (negative) or 1 (positive)")
  if min(training.batch_size, training.grad_accum, training.n_epochs) < 1 or not 0.0 <= training.dropout < 1.0:
    raise AxjaxError(f"batch_size, grad_accum and n_epochs must be >= 1 and dropout in [0, 1): {training}")
  c, n, d = states.shape
  concept_ids = np.arange(c) if concept_ids is None else np.asarray(concept_ids)
  if concept_ids.shape != (c,):
    raise AxjaxError(f"concept_ids must name the {c} concepts, got shape {concept_ids.shape}")
  plans = [step_plan(orders, training) for orders in epoch_orders(concept_ids, n, training)]
  rows, weights = np.stack([p[0] for p in plans]), np.stack([p[1] for p in plans])
  k_init, k_drop = jax.random.split(jax.random.key(training.seed))
  if init is not None:
    _check_heads(init, d)
    if np.shape(init["b2"])[0] != c:
      raise AxjaxError(f"init has {np.shape(init['b2'])[0]} heads for {c} concepts")
  per_concept = lambda key: jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(concept_ids, jnp.uint32))
  mlp = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), init) if init is not None else jax.tree.map(
      lambda a: a[:, 0], jax.vmap(lambda k: init_classifiers(k, 1, d))(per_concept(k_init)))
  mlp, losses = _train(mlp, jnp.asarray(states), jnp.asarray(labels, jnp.int32), jnp.asarray(rows),
                       jnp.asarray(weights), per_concept(k_drop), training, plans[0][2])
  return mlp, np.asarray(losses)


def _final_state(params, config: GemmaConfig, layer: int, resid: Array, mask: Array) -> Array:
  """From the residual stream after `layer`: layers layer+1..N-1, the final norm, each row's last real token."""
  x, _, _ = run_layers(layer_slice(params, layer + 1, config.num_layers), config, resid, frame_from_mask(mask),
                       layer + 1)
  x = RMSNorm(config.rms_norm_eps).apply({"params": params["final_norm"]}, x)
  last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)  # AxBench: attention_mask.sum() - 1 (right pads)
  return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnums=(1,))
def last_token_states(params, config: GemmaConfig, tokens: Array, mask: Array) -> Array:
  """The classifier's input [B, d]: the whole model's final-norm state at each row's last real token."""
  chex.assert_rank(tokens, 2)
  chex.assert_equal_shape([tokens, mask])
  mask = mask.astype(bool)
  return _final_state(params, config, -1, embed(params, config, tokens), mask)


def _positive_prob(params, config, layer, rows_mlp, resid, mask) -> tuple[Array, Array]:
  """(sum, per row) of P(class 1) [B] under each row's own head, from the residual stream after `layer`: the
  sum's gradient is every row's own gradient, as rows do not interact."""
  states = _final_state(params, config, layer, resid, mask)
  prob = jax.vmap(lambda m, s: classifier_probs(m, s)[1])(rows_mlp, states)
  return prob.sum(), prob


def baseline_token_ids(config: GemmaConfig, ig: IGConfig = IGConfig()) -> np.ndarray:
  """The min(V, baseline_tokens) random token ids (with repeats, as torch.randint) whose embeddings IG averages."""
  count = min(config.vocab_size, ig.baseline_tokens)
  return np.asarray(jax.random.randint(jax.random.key(ig.seed), (count,), 0, config.vocab_size))


def ig_baseline(params, config: GemmaConfig, ig: IGConfig = IGConfig()) -> Array:
  """IG's baseline [d]: the mean raw embedding-table row of `baseline_token_ids`, in float32."""
  return jnp.take(params["embed"], jnp.asarray(baseline_token_ids(config, ig)), axis=0).astype(jnp.float32).mean(0)


def _check_heads(mlp: Params, hidden_size: int) -> None:
  """Refuses heads that are not stacked [C, ...] for this width."""
  d = hidden_size
  expected = _head_shapes(d)
  if set(mlp) != set(expected) or any(np.shape(mlp[k])[1:] != s for k, s in expected.items()) or \
      len({np.shape(a)[0] for a in mlp.values()}) != 1:
    raise AxjaxError(f"classifier heads must be stacked [C, ...] with shapes {expected} for width {d}")


def _checked(config: GemmaConfig, layer: int, mlp: Params, concept_index, tokens, mask) -> Params:
  """Refuses a bad layer, head width or concept index; returns each row's head [B, ...]."""
  config.check_layer(layer)
  chex.assert_rank(tokens, 2)
  chex.assert_equal_shape([tokens, mask])
  _check_heads(mlp, config.hidden_size)
  index = np.asarray(concept_index)
  if index.shape != (tokens.shape[0],) or index.min(initial=0) < 0 or index.max(initial=0) >= mlp["b2"].shape[0]:
    raise AxjaxError(f"concept_index must give each of the {tokens.shape[0]} rows one of the "
                     f"{mlp['b2'].shape[0]} heads")
  return jax.tree.map(lambda a: jnp.asarray(a)[index], mlp)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _input_x_gradient(params, config, layer, rows_mlp, tokens, mask):
  mask = mask.astype(bool)
  resid = residual_stream(params, config, tokens, mask, layer)
  grad, prob = jax.grad(_positive_prob, argnums=4, has_aux=True)(params, config, layer, rows_mlp, resid, mask)
  return resid * grad, prob


def input_x_gradient(params, config: GemmaConfig, layer: int, mlp: Params, concept_index, tokens, mask
                     ) -> tuple[Array, Array]:
  """InputXGradients: attributions h * dP/dh [B, T, d] at the residual stream after `layer` and P(class 1) [B],
  row b under head concept_index[b] of the stacked heads `mlp`. Rows are right-padded (AxBench's batches)."""
  return _input_x_gradient(params, config, layer, _checked(config, layer, mlp, concept_index, tokens, mask),
                           tokens, mask)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _integrated_gradients(params, config, layer, ig, rows_mlp, tokens, mask, baseline):
  mask = mask.astype(bool)
  resid = residual_stream(params, config, tokens, mask, layer)
  base = jnp.broadcast_to(baseline.astype(resid.dtype), resid.shape)
  diff = resid - base
  grad = lambda r: jax.grad(_positive_prob, argnums=4, has_aux=True)(params, config, layer, rows_mlp, r, mask)[0]

  def chunk(total, alphas):  # alphas [step_chunk]: one vmapped pass over these points of the path
    return total + jax.vmap(lambda a: grad(base + a * diff))(alphas).sum(0), None

  alphas = (jnp.arange(ig.steps, dtype=jnp.float32) / ig.steps).reshape(-1, ig.step_chunk)
  total, _ = jax.lax.scan(chunk, jnp.zeros_like(resid), alphas)
  return diff * (total / ig.steps), _positive_prob(params, config, layer, rows_mlp, resid, mask)[1]


def integrated_gradients(params, config: GemmaConfig, layer: int, mlp: Params, concept_index, tokens, mask,
                         ig: IGConfig = IGConfig(), baseline: Array | None = None) -> tuple[Array, Array]:
  """IntegratedGradients: attributions [B, T, d] at the residual stream after `layer` and P(class 1) [B], as
  `input_x_gradient`; `baseline` [d] defaults to `ig_baseline` (pass it to avoid recomputing it per batch)."""
  if min(ig.steps, ig.step_chunk) < 1 or ig.steps % ig.step_chunk:
    raise AxjaxError(f"IG steps ({ig.steps}) must be a positive multiple of step_chunk ({ig.step_chunk})")
  baseline = ig_baseline(params, config, ig) if baseline is None else jnp.asarray(baseline)
  chex.assert_shape(baseline, (config.hidden_size,))
  return _integrated_gradients(params, config, layer, ig, _checked(config, layer, mlp, concept_index, tokens, mask),
                               tokens, mask, baseline)


def token_scores(attributions: Array) -> Array:
  """Per-token detection scores s_t = sum_d |attr_{t,d}| [B, T] in float32."""
  chex.assert_rank(attributions, 3)
  return jnp.abs(attributions.astype(jnp.float32)).sum(-1)


HEADS = ("w1", "b1", "w2", "b2")  # a dictionary's extras: each concept's classifier head
_ROWS = 8  # eval rows per attribution batch
_WIDTH_MULTIPLE = 128  # coarse width buckets: each shape compiles a backward pass, costlier than its padding


def fit_concepts(name: str, cache, hp: dict, seed: int, progress, checkpoint_dir):
  """The pipeline's IG/IxG fit (`fit.fit_method`): every concept's head trained on the final-layer last-token
  states of its binarized examples (computed once for the chunk's shared rows), concepts with the same
  example count in one vmapped call. Returns (extras: the heads [C, ...], {"loss": [steps, C]}, steps per
  epoch)."""
  del checkpoint_dir  # the heads train in seconds: no epoch state
  ex, config = cache.tokenised("binarized"), cache.model.config
  states = np.zeros((len(ex.tokens), config.hidden_size), np.float32)
  for rows, placed in placed_batches([ex.tokens, ex.attention_mask], ex.attention_mask, 16, WIDTH_MULTIPLE,
                                     cache.mesh):
    states[rows] = processes.to_host(last_token_states(cache.placed_params, config, *placed))
  training = ClassifierTraining(batch_size=hp["batch_size"], grad_accum=hp["gradient_accumulation_steps"],
                                n_epochs=hp["n_epochs"], lr=hp["lr"], weight_decay=hp["weight_decay"], seed=seed)
  counts = ex.row_valid.sum(axis=1)
  heads = {k: np.zeros((len(counts), *s)) for k, s in _head_shapes(config.hidden_size).items()}
  losses = {}
  for group, n in enumerate(np.unique(counts)):
    members = np.flatnonzero(counts == n)
    rows = np.stack([ex.index[c][ex.row_valid[c]] for c in members])
    labels = np.stack([ex.labels[c][ex.row_valid[c]] for c in members])
    mlp, loss = train_classifiers(states[rows], labels, training, concept_ids=ex.concept_ids[members])
    for k in HEADS:
      heads[k][members] = np.asarray(mlp[k])
    losses.update(zip(members, loss))
    if progress is not None:
      progress(f"train {name}", group + 1, len(np.unique(counts)))
  steps = max(len(v) for v in losses.values())  # the concepts with the most examples
  record = np.full((steps, len(counts)), np.nan, np.float32)
  for c, loss in losses.items():
    record[:len(loss), c] = loss
  return {k: v.astype(np.float32) for k, v in heads.items()}, {"loss": record}, steps // training.n_epochs


def _head_shapes(d: int) -> dict[str, tuple[int, ...]]:
  return {"w1": (d, d // 2), "b1": (d // 2,), "w2": (d // 2, 2), "b2": (2,)}


def _scored_so_far(scratch: str | None, rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
  """(scores [rows, columns], done [rows]) from an interrupted run's `scratch` file, or zeros and none done."""
  if scratch is not None and os.path.exists(scratch):
    with np.load(scratch) as saved:
      if saved["scores"].shape == (rows, columns):
        return saved["scores"], saved["done"]
  return np.zeros((rows, columns), np.float32), np.zeros(rows, bool)


def _save_scored(scratch: str, scores: np.ndarray, done: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, scores=scores, done=done)
  atomic_files.write_bytes(scratch, buffer.getvalue())


_SAVE_EVERY = 8  # batches between saves of the scores so far (IG: about a minute and a half each on 2 cores)


def detection_scores(dictionary, model, ex, layer: int, *, params=None, mesh=None, progress=None, scratch=None,
                     **_) -> tuple[np.ndarray, bool]:
  """[E, C] max token score (s_t = sum_d |attr|, positions from the chat prefix on) of each latent-eval row
  under its own concept's head, 0 in the other columns: attributions take a backward pass per row and head, so
  only a concept's own rows are scored (False: no imbalanced pool). With `scratch` (a file path), the scores so
  far are saved every few batches and an interrupted run resumes from them."""
  params = model.params if params is None else params
  own = dictionary.rows_of(ex.concept_ids, missing=-1)
  subset = np.flatnonzero(own >= 0)
  heads = {k: dictionary.extras[k] for k in HEADS}
  steps = dictionary.hyperparameters.get("steps")
  baseline = None if steps is None else ig_baseline(params, model.config, IGConfig(steps=steps))
  out, done = _scored_so_far(scratch, len(ex.concept_ids), dictionary.num_concepts)
  report = None if progress is None else (lambda n: progress(f"detection scores ({dictionary.method})", n,
                                                             len(subset)))
  cut = lambda a: a[subset]
  batches = placed_batches([cut(ex.tokens), cut(ex.attention_mask), cut(ex.score_mask)], cut(ex.attention_mask),
                           _ROWS, _WIDTH_MULTIPLE, mesh, report)
  for batch, (rows, (tokens, mask, score_mask)) in enumerate(batches):
    if done[subset[rows]].all():
      continue
    index = own[subset[rows]]
    if steps is None:
      attr, _ = input_x_gradient(params, model.config, layer, heads, index, tokens, mask)
    else:
      ig = IGConfig(steps=steps, step_chunk=math.gcd(steps, IGConfig.step_chunk))
      attr, _ = integrated_gradients(params, model.config, layer, heads, index, tokens, mask, ig, baseline)
    scores = processes.to_host(jnp.where(score_mask, token_scores(attr), -jnp.inf).max(axis=1))
    out[subset[rows], index] = scores[:len(rows)]
    done[subset[rows]] = True
    if scratch is not None and batch % _SAVE_EVERY == _SAVE_EVERY - 1:
      _save_scored(scratch, out, done)
  return out, False
