"""Per-concept training objectives of the gradient-trained rank-1 methods (AxBench's Probe, ReFT-r1, SSV).

Each objective is a loss over one concept's batch; `joint_training` vmaps it over concepts. Batches hold the
frozen model's residual stream after layer L (`acts`), computed once and reused every epoch.
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp

from axjax.model.config import GemmaConfig
from axjax.model.lm_loss import token_nll
from axjax.model.transformer import frame_from_mask, layer_slice, run_layers

# An LM-loss step's (remat, vocabulary chunk), fastest first: train_jointly takes the first whose compiled step
# fits the memory budget. Keeping the upper layers' activations for the backward pass saves a forward;
# recomputing them, then smaller [rows, chunk] logits of the output layer, save memory.
MEMORY_LADDER = ((False, 16_384), (True, 16_384), (True, 4_096), (True, 1_024))

Array = jax.Array


def _weighted_mean(values: Array, weights: Array) -> Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _scores(h: Array, w: Array) -> Array:
  """h . w [..., T] in float32 at full matmul precision, whatever the model dtype (as detection scores)."""
  return jnp.einsum("...d,d->...", h.astype(jnp.float32), w.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def _fired(scores: Array, where: Array, weight: Array) -> Array:
  """The share of intervened tokens whose score is positive (a row's share, averaged over weighted rows)."""
  return _weighted_mean(jnp.sum((scores > 0) * where, -1) / jnp.maximum(where.sum(-1), 1.0), weight)


def bce_with_logits(logits: Array, labels: Array) -> Array:
  """Binary cross-entropy of sigmoid(logits), computed stably: the gradient never saturates."""
  return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


@jax.custom_vjp
def _torch_bce(p: Array, labels: Array) -> Array:
  """torch.nn.BCELoss on probabilities: logs clamped at -100 (a wrong, saturated prediction costs 100)."""
  return -(labels * jnp.maximum(jnp.log(p), -100.0) + (1.0 - labels) * jnp.maximum(jnp.log1p(-p), -100.0))


def _torch_bce_fwd(p, labels):
  return _torch_bce(p, labels), (p, labels)


def _torch_bce_bwd(residuals, g):
  p, labels = residuals  # torch's backward: (p - y) / max(p (1 - p), 1e-12)
  return g * (p - labels) / jnp.maximum(p * (1.0 - p), 1e-12), jnp.zeros_like(labels)


_torch_bce.defvjp(_torch_bce_fwd, _torch_bce_bwd)


def axbench_bce(logits: Array, labels: Array) -> Array:
  """AxBench's probe loss, BCELoss(sigmoid(logits)) in float32, with torch's gradients: sigmoid rounds to 1
  beyond logits of about 17 and the gradient there is 0, so confidently wrong tokens stop teaching."""
  return _torch_bce(jax.nn.sigmoid(logits.astype(jnp.float32)), labels)


@dataclasses.dataclass(frozen=True)
class UpperModel:
  """The frozen layers above L and the unembedding, applied to every concept's edited residual stream.

  Only the packed positions that predict an output token (batching.packed_loss_positions) reach the 262k-way
  output layer, and they are pooled across the concepts of a group before it: each concept's packed width is
  the epoch's largest, but a group's total varies far less than one concept's count, so pooling leaves little
  padding. `groups` is the mesh's concept axis (pooling stays on one device); `output_rows` the most real
  positions a group has in any step (batching.pooled_rows), None for every packed position.
  """

  config: GemmaConfig
  layer: int
  remat: bool = True  # recompute the upper layers in the backward pass instead of keeping their activations
  output_rows: int | None = None
  groups: int = 1
  vocab_chunk: int = 16_384  # vocabulary entries per step of the output layer's scan: [rows, chunk] logits

  def output_nll(self, model_params, h: Array, batch) -> Array:
    """Per concept [C], the mean next-token NLL over its output tokens (HF's loss: one mean over all output
    tokens of the batch), for edited streams h [C, B, T, d] and the batch's arrays [C, ...]."""
    nll = self.position_nll(model_params, h, batch)
    return jnp.sum(nll, -1) / jnp.maximum(jnp.sum(batch["loss_valid"], -1), 1.0)

  def position_nll(self, model_params, h: Array, batch) -> Array:
    """[C, W]: the next-token NLL at each packed output position `batch["loss_index"]` (flat row * T + t of
    the concept's [B, T]; 0 where `loss_valid` is 0)."""
    c = self.config
    upper = layer_slice(model_params, self.layer + 1, c.num_layers)
    run = lambda h, mask: run_layers(upper, c, h, frame_from_mask(mask), self.layer + 1, remat=self.remat)[0]
    h = jax.vmap(run)(h, batch["mask"])
    concepts, width = batch["loss_index"].shape
    if concepts % self.groups:
      raise ValueError(f"{concepts} concepts do not split into {self.groups} equal groups")
    rows_per_concept = h.shape[1] * h.shape[2]
    # Group-local flat indices: concept k of a group owns rows [k * B * T, (k + 1) * B * T).
    local = (jnp.arange(concepts) % (concepts // self.groups)) * rows_per_concept
    index = (batch["loss_index"] + local[:, None]).reshape(self.groups, -1)
    valid = batch["loss_valid"].reshape(self.groups, -1)
    pooled = min(self.output_rows or index.shape[1], index.shape[1])

    def group_nll(h, tokens, index, valid):
      keep = jnp.argsort(valid == 0, stable=True)[:pooled]  # the real positions first, in order
      nll = token_nll(model_params, c, h[index[keep]], tokens[index[keep] + 1], self.vocab_chunk)
      return jnp.zeros_like(valid).at[keep].set(nll * valid[keep])

    shape = (self.groups, -1)
    nll = jax.vmap(group_nll)(h.reshape(*shape, c.hidden_size), batch["tokens"].reshape(shape), index, valid)
    return nll.reshape(concepts, width)


def one_concept(joint, params, batch, progress, model_params) -> tuple[Array, dict[str, Array]]:
  """A joint objective's (loss, parts) for a single concept's params and batch (no concept axis)."""
  add_axis = lambda tree: jax.tree.map(lambda a: jnp.asarray(a)[None], tree)
  loss, parts = joint(add_axis(params), add_axis(batch), progress, model_params)
  return loss[0], {k: v[0] for k, v in parts.items()}


# Each objective is a frozen dataclass: static under jit and hashable by value, so every training run with the
# same settings and shapes reuses one compiled step (a functools.partial would hash by identity and recompile).
# Each returns (loss, parts): `parts` are per-step scalars kept in the training record (loss curves, and
# `fired`, the share of intervened tokens whose latent is positive, which tells a dead ReLU latent). In a
# hyperparameter sweep each concept brings its own loss coefficient in batch["coeff_l1"].
@dataclasses.dataclass(frozen=True)
class ProbeObjective:
  """Linear probe: BCE of sigmoid(h . w) against the example label at every scored token (bias unused).

  `saturating=True` is AxBench's loss (`axbench_bce`); False is the stable `bce_with_logits`.
  """

  coeff_l1: float = 0.0
  saturating: bool = True

  def __call__(self, params, batch, progress, frozen) -> tuple[Array, dict[str, Array]]:
    del progress, frozen
    logits = _scores(batch["acts"], params["w"])
    labels = jnp.broadcast_to(batch["label"][:, None].astype(jnp.float32), logits.shape)
    mask = batch["position_mask"] * batch["weight"][:, None]
    bce = _weighted_mean((axbench_bce if self.saturating else bce_with_logits)(logits, labels), mask)
    l1 = sum(jnp.abs(p).sum() for p in jax.tree.leaves(params))
    accuracy = _weighted_mean(((logits > 0) == (labels > 0)).astype(jnp.float32), mask)
    return bce + batch.get("coeff_l1", self.coeff_l1) * l1, {"bce": bce, "accuracy": accuracy}


def _pad_copies(batch, topk: int, w: Array) -> Array:
  """AxBench's pad copies for the top-k: [B, topk] latents of each row's first pad, repeated (longest row's
  intervened count - own count) times, -1 beyond that. AxBench pads every row's list of intervened positions to
  the batch's longest with the index of the row's first pad token, so those copies can enter the top-k."""
  counts = jnp.sum(batch["position_mask"], axis=-1)
  longest = jnp.max(jnp.where(batch["weight"] > 0, counts, 0.0))  # filler rows are not in AxBench's batch
  pad_latent = jax.nn.relu(_scores(batch["pad_acts"], w))
  copies = longest - counts
  return jnp.where(jnp.arange(topk)[None] < copies[:, None], pad_latent[:, None], -1.0)


@dataclasses.dataclass(frozen=True)
class ReftR1Objective:
  """ReFT-r1 (AxBench's LsReFT): h + mean(top-k ReLU(h . w)) w at every intervened position; LM loss on
  outputs plus an L1 penalty on the non-top-k latents whose weight ramps linearly from 0.

  `pad_in_topk=True` is AxBench's top-k, whose candidates include copies of a pad token's latent
  (`_pad_copies`); False takes the top-k over real intervened tokens only.
  """

  upper: UpperModel
  topk: int
  coeff_l1: float
  pad_in_topk: bool = True

  def _steer(self, params, batch) -> tuple[Array, Array, Array]:
    """One concept's steered stream [B, T, d], its L1 term and the share of latents that fired."""
    h, where, w = batch["acts"], batch["position_mask"], params["w"]
    latent = jax.nn.relu(_scores(h, w))
    candidates = jnp.where(where > 0, latent, -1.0)  # top-k over intervened positions only
    if self.pad_in_topk:
      candidates = jnp.concatenate([candidates, _pad_copies(batch, self.topk, w)], axis=-1)
    top, top_idx = jax.lax.top_k(candidates, self.topk)
    magnitude = jnp.mean(jnp.maximum(top, 0.0), axis=-1)  # [B]
    steer = where[..., None] * magnitude[:, None, None] * w  # float32, added in float32, then the model dtype
    steered = (h.astype(jnp.float32) + steer).astype(h.dtype)
    rows = jnp.arange(h.shape[0])[:, None]
    in_top = jnp.zeros(candidates.shape, jnp.float32).at[rows, top_idx].set(1.0)[:, :h.shape[1]]
    non_top = latent * (1.0 - in_top) * where
    l1 = _weighted_mean(non_top.sum(-1) / (where.sum(-1) + jnp.finfo(jnp.float32).eps), batch["weight"])
    return steered, l1, _fired(latent, where, batch["weight"])

  def joint(self, params, batch, progress, model_params) -> tuple[Array, dict[str, Array]]:
    """Every concept's (loss [C], parts) for params and batch with a leading concept axis."""
    steered, l1, fired = jax.vmap(self._steer)(params, batch)
    lm = self.upper.output_nll(model_params, steered, batch)
    return lm + progress * batch.get("coeff_l1", self.coeff_l1) * l1, {"lm": lm, "l1": l1, "fired": fired}

  def __call__(self, params, batch, progress, model_params) -> tuple[Array, dict[str, Array]]:
    return one_concept(self.joint, params, batch, progress, model_params)


@dataclasses.dataclass(frozen=True)
class SsvObjective:
  """SSV: h + v at every intervened position, LM loss on outputs (v unconstrained)."""

  upper: UpperModel

  def joint(self, params, batch, progress, model_params) -> tuple[Array, dict[str, Array]]:
    """Every concept's (loss [C], parts) for params and batch with a leading concept axis."""
    del progress
    h, where, v = batch["acts"], batch["position_mask"], params["w"]
    steered = (h.astype(jnp.float32) + where[..., None] * v[:, None, None]).astype(h.dtype)
    lm = self.upper.output_nll(model_params, steered, batch)
    return lm, {"lm": lm, "fired": jax.vmap(_fired)(jax.vmap(_scores)(h, v), where, batch["weight"])}

  def __call__(self, params, batch, progress, model_params) -> tuple[Array, dict[str, Array]]:
    return one_concept(self.joint, params, batch, progress, model_params)
