"""The preference losses of RePS and its baselines on per-sequence log-probabilities (reference section 6).

Each pair is a winner and a loser response to one prompt, both scored by the steered policy (`policy_*`, summed
log-probs of their response tokens) and by the same model without the intervention (`reference_*`, constants
cached before training). `lengths_*` normalise the policy's log-probs: upstream's code divides by the whole
sequence (prompt + response, its attention mask), the paper by the response alone (upstream issue #140).

- "scaled_simpo" (RePS): -log sigmoid(max(ref_l - ref_w, 1) / |w| * logp_w - logp_l / |l|); the scaler and
  beta are 1 and the margin gamma 0 in every RePS config, so they are not parameters here.
- "dpo" (the BiPO baseline): -log sigmoid(beta * ((logp_w - logp_l) - (ref_w - ref_l))).
- "simpo": -log sigmoid(beta / |w| * logp_w - beta / |l| * logp_l - gamma).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from axjax.errors import AxjaxError

Array = jax.Array
LOSS_TYPES = ("scaled_simpo", "dpo", "simpo")
LENGTH_NORMS = ("sequence", "response")  # upstream's code (prompt + response) or the paper (response only)


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
  """Which preference loss, with its constants (upstream's defaults: beta 1, gamma 0)."""

  loss_type: str = "scaled_simpo"
  beta: float = 1.0
  gamma: float = 0.0

  def __post_init__(self):
    if self.loss_type not in LOSS_TYPES:
      raise AxjaxError(f"unknown preference loss {self.loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")

  def __call__(self, policy_w: Array, policy_l: Array, reference_w: Array, reference_l: Array,
               lengths_w: Array, lengths_l: Array) -> Array:
    """Per-pair losses [P] from per-pair summed log-probs and normalising lengths [P] (float32)."""
    chex.assert_equal_shape([policy_w, policy_l, reference_w, reference_l, lengths_w, lengths_l])
    if self.loss_type == "scaled_simpo":
      scale = jnp.maximum(reference_l - reference_w, 1.0)
      margin = scale / lengths_w * policy_w - policy_l / lengths_l
    elif self.loss_type == "dpo":
      margin = self.beta * ((policy_w - policy_l) - (reference_w - reference_l))
    else:
      margin = self.beta / lengths_w * policy_w - self.beta / lengths_l * policy_l - self.gamma
    return -jax.nn.log_sigmoid(margin)


def sequence_logps(token_logps: Array, response: Array) -> Array:
  """Summed log-probs [..] of the response tokens: token_logps [.., T] of each next token, `response` [.., T]
  marking the positions whose next token belongs to the response."""
  chex.assert_equal_shape([token_logps, response])
  return jnp.sum(jnp.where(response, token_logps, 0.0), axis=-1)


def normalising_lengths(attention: Array, response: Array, norm: str) -> Array:
  """Each sequence's length [..] for the loss: its real tokens ("sequence", upstream's attention_mask.sum())
  or its response tokens ("response")."""
  if norm not in LENGTH_NORMS:
    raise AxjaxError(f"unknown length normaliser {norm!r}; expected one of {', '.join(LENGTH_NORMS)}")
  return jnp.sum(attention if norm == "sequence" else response, axis=-1).astype(jnp.float32)
