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

Array = jax.Array


def _weighted_mean(values: Array, weights: Array) -> Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def bce_with_logits(logits: Array, labels: Array) -> Array:
  """Binary cross-entropy of sigmoid(logits), computed stably; torch's BCELoss clamps log at -100."""
  log_p = jnp.maximum(jax.nn.log_sigmoid(logits), -100.0)
  log_not_p = jnp.maximum(jax.nn.log_sigmoid(-logits), -100.0)
  return -(labels * log_p + (1.0 - labels) * log_not_p)


@dataclasses.dataclass(frozen=True)
class UpperModel:
  """The frozen layers above L and the unembedding, applied to an edited residual stream."""

  config: GemmaConfig
  layer: int

  def output_nll(self, model_params, h: Array, batch) -> Array:
    """Mean next-token NLL over output tokens (HF's loss: one mean over all output tokens of the batch)."""
    c = self.config
    frame = frame_from_mask(batch["mask"])
    upper = layer_slice(model_params, self.layer + 1, c.num_layers)
    h, _, _ = run_layers(upper, c, h, frame, self.layer + 1, remat=True)
    # Gather the positions that predict an output token: [B, P] with their targets.
    pos, valid = batch["loss_positions"], batch["loss_valid"] * batch["weight"][:, None]
    rows = jnp.take_along_axis(h, pos[..., None], axis=1)
    targets = jnp.take_along_axis(batch["tokens"], pos + 1, axis=1)
    nll = token_nll(model_params, c, rows.reshape(-1, c.hidden_size), targets.reshape(-1))
    return _weighted_mean(nll, valid.reshape(-1))


# Each objective is a frozen dataclass: static under jit and hashable by value, so every training run with the
# same settings and shapes reuses one compiled step (a functools.partial would hash by identity and recompile).
@dataclasses.dataclass(frozen=True)
class ProbeObjective:
  """Linear probe: BCE of sigmoid(h . w) against the example label at every scored token (bias unused)."""

  coeff_l1: float = 0.0

  def __call__(self, params, batch, progress, frozen) -> Array:
    del progress, frozen
    logits = jnp.einsum("btd,d->bt", batch["acts"], params["w"])
    labels = jnp.broadcast_to(batch["label"][:, None].astype(jnp.float32), logits.shape)
    mask = batch["position_mask"] * batch["weight"][:, None]
    l1 = sum(jnp.abs(p).sum() for p in jax.tree.leaves(params))
    return _weighted_mean(bce_with_logits(logits, labels), mask) + self.coeff_l1 * l1


@dataclasses.dataclass(frozen=True)
class ReftR1Objective:
  """ReFT-r1 (AxBench's LsReFT): h + mean(top-k ReLU(h . w)) w at every intervened position; LM loss on
  outputs plus an L1 penalty on the non-top-k latents whose weight ramps linearly from 0."""

  upper: UpperModel
  topk: int
  coeff_l1: float

  def __call__(self, params, batch, progress, model_params) -> Array:
    h, where = batch["acts"], batch["position_mask"]
    latent = jax.nn.relu(jnp.einsum("btd,d->bt", h, params["w"].astype(h.dtype)))
    masked = jnp.where(where > 0, latent, -1.0)  # top-k over intervened positions only
    top, top_idx = jax.lax.top_k(masked, self.topk)
    magnitude = jnp.mean(jnp.maximum(top, 0.0), axis=-1)  # [B]
    steered = h + jnp.where(where[..., None] > 0, magnitude[:, None, None] * params["w"], 0.0)
    in_top = jnp.zeros_like(latent).at[jnp.arange(h.shape[0])[:, None], top_idx].set(1.0)
    non_top = latent * (1.0 - in_top) * where
    l1 = _weighted_mean(non_top.sum(-1) / (where.sum(-1) + jnp.finfo(jnp.float32).eps), batch["weight"])
    return self.upper.output_nll(model_params, steered, batch) + progress * self.coeff_l1 * l1


@dataclasses.dataclass(frozen=True)
class SsvObjective:
  """SSV: h + v at every intervened position, LM loss on outputs (v unconstrained)."""

  upper: UpperModel

  def __call__(self, params, batch, progress, model_params) -> Array:
    del progress
    h, where = batch["acts"], batch["position_mask"]
    steered = h + where[..., None] * params["w"].astype(h.dtype)
    return self.upper.output_nll(model_params, steered, batch)
