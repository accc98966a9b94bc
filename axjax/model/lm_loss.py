"""Next-token cross-entropy that never materialises [N, V] logits: the vocabulary is scanned in chunks.

A 262k-token vocabulary makes full logits 1 MB per token in float32; with this loss only [N, chunk] logits
exist at a time. The last chunk is zero-padded and its padding masked to -inf; everything accumulates in
float32 whatever the dtype of the rows and the table.

Value only (e.g. perplexity): one scan, one [N, d] x [d, V] matmul, an online log-sum-exp.

Gradient: `jax.custom_vjp`. With l_v = cap * tanh(z_v / cap) (or l_v = z_v without a soft-cap), z_v = x . W_v,

    d nll / dx = E_p[dl_v/dx] - dl_target/dx,   dl_v/dx = (1 - tanh^2(z_v / cap)) W_v,

so the forward scan accumulates, next to the log-sum-exp and with the same online-softmax rescaling, the
softmax-weighted sum of the (soft-cap-weighted) unembedding rows: two matmuls in all ([N, d] x [d, V] for the
logits, [N, V] x [V, d] for p @ W) and a backward that is a scalar multiply of the saved [N, d] gradient. (A
checkpointed scan differentiated by JAX costs three: logits, recomputed logits, gradient matmul.) The final
RMSNorm stays outside the custom rule, so JAX differentiates it (h and its scale both get gradients).

The unembedding table gets a ZERO cotangent: it is frozen in every axjax objective (ReFT-r1 / SSV train only
the intervention; perplexity takes no gradient). A caller that needs the table's gradient must not use this
function.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from axjax.model.config import GemmaConfig
from axjax.model.layers import RMSNorm


def token_nll(params, config: GemmaConfig, h: jax.Array, targets: jax.Array, chunk: int = 16_384) -> jax.Array:
  """-log p(target) per row, float32 [N], for residual-stream rows h [N, d] (before the final norm), targets [N].

  Equals `-log_softmax(unembed(h))[target]`, including Gemma 2's final soft-cap. Differentiable in h and in the
  final norm's scale; the unembedding table `params["embed"]` is treated as frozen: its gradient is ZERO (see
  the module docstring), so do not use this function where the table is trained.
  """
  chex.assert_rank(h, 2)
  chex.assert_shape(targets, (h.shape[0],))
  chex.assert_rank(params["embed"], 2)
  chex.assert_axis_dimension(params["embed"], 1, h.shape[1])
  x = RMSNorm(config.rms_norm_eps).apply({"params": params["final_norm"]}, h)
  cap = float(config.final_logit_softcap) if config.final_logit_softcap else 0.0
  return _normed_nll(x, params["embed"], targets, int(chunk), cap)


def _chunk_tables(table: jax.Array, chunk: int) -> tuple[jax.Array, int]:
  """Table [V, d] zero-padded to whole chunks, as [n_chunks, chunk, d]; and V."""
  vocab = table.shape[0]
  n_chunks = -(-vocab // chunk)
  padded = jnp.pad(table, ((0, n_chunks * chunk - vocab), (0, 0)))
  return padded.reshape(n_chunks, chunk, table.shape[1]), vocab


def _scan_vocab(x: jax.Array, table: jax.Array, chunk: int, cap: float, with_grad: bool):
  """One scan over the vocabulary chunks: float32 (running max m [N], sum s [N] of exp(l - m), and, if
  `with_grad`, sum [N, d] of exp(l - m) * dl_v/dz_v * W_v). log-sum-exp = m + log s, E_p[dl_v/dx] = acc / s."""
  n, d = x.shape
  chunks, vocab = _chunk_tables(table, chunk)

  def step(carry, xs):
    m, s, acc = carry
    rows, index = xs
    z = jnp.matmul(x, rows.T, preferred_element_type=jnp.float32)  # [N, chunk]
    if cap:
      t = jnp.tanh(z / cap)
      logits = t * cap
    else:
      logits = z
    valid = index * chunk + jnp.arange(chunk) < vocab  # the padding of the last chunk
    logits = jnp.where(valid[None], logits, -jnp.inf)
    # Every chunk holds at least one real token, so m_new is finite and exp(-inf) = 0 masks the padding.
    m_new = jnp.maximum(m, logits.max(axis=-1))
    rescale = jnp.exp(m - m_new)
    e = jnp.exp(logits - m_new[:, None])
    s = s * rescale + e.sum(axis=-1)
    if with_grad:
      weights = e * (1.0 - t * t) if cap else e
      acc = acc * rescale[:, None] + jnp.matmul(weights, rows.astype(jnp.float32))
    return (m_new, s, acc), None

  init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32),
          jnp.zeros((n, d) if with_grad else (), jnp.float32))
  (m, s, acc), _ = jax.lax.scan(step, init, (chunks, jnp.arange(chunks.shape[0])))
  return m + jnp.log(s), (acc / s[:, None] if with_grad else None)


def _target_logit(x: jax.Array, table: jax.Array, targets: jax.Array, cap: float):
  """Float32 target logits [N] and the target unembedding rows [N, d] (float32)."""
  rows = jnp.take(table, targets, axis=0).astype(jnp.float32)
  z = jnp.einsum("nd,nd->n", x.astype(jnp.float32), rows)
  if not cap:
    return z, jnp.ones_like(z), rows
  t = jnp.tanh(z / cap)
  return t * cap, 1.0 - t * t, rows


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normed_nll(x: jax.Array, table: jax.Array, targets: jax.Array, chunk: int, cap: float) -> jax.Array:
  """NLL [N] of the normed rows x [N, d]; the primal (no gradient) path scans for the log-sum-exp only."""
  lse, _ = _scan_vocab(x, table, chunk, cap, with_grad=False)
  target_logit, _, _ = _target_logit(x, table, targets, cap)
  return lse - target_logit


def _normed_nll_fwd(x, table, targets, chunk, cap):
  lse, expected = _scan_vocab(x, table, chunk, cap, with_grad=True)
  target_logit, target_slope, target_rows = _target_logit(x, table, targets, cap)
  grad_x = expected - target_slope[:, None] * target_rows  # d nll_n / d x_n, float32 [N, d]
  return lse - target_logit, (grad_x, jnp.zeros((0,), x.dtype))  # the empty array carries x's dtype


def _normed_nll_bwd(chunk, cap, residuals, g):
  del chunk, cap
  grad_x, dtype_marker = residuals
  # The table is frozen in every axjax objective: zero cotangent (None); targets are integers.
  return (g[:, None] * grad_x).astype(dtype_marker.dtype), None, None


_normed_nll.defvjp(_normed_nll_fwd, _normed_nll_bwd)
