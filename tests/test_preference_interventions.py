"""RePS's interventions against torch written from the reference doc (section 6): the steering vector's
`h + (alpha + b) v` and its null-out `h - ReLU(h.v + b) / ||v||^2 v` per row, and LoReFT's
`h + R^T(alpha (W h + b - R h))`; outputs and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axjax.model.adapters import loreft, orthonormal_rows
from axjax.model.interventions import InterventionContext, preference_vector

B, T, D, R = 4, 5, 16, 4


def _context(rng):
  mask = rng.random((B, T)) < 0.8
  return mask, InterventionContext(jnp.asarray(mask), jnp.broadcast_to(jnp.arange(T), (B, T)))


def test_preference_vector_adds_and_nulls_out_per_row():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  h = rng.normal(size=(B, T, D)).astype(np.float32)
  v = rng.normal(size=(B, D)).astype(np.float32)
  h[1] += 3 * v[1]  # row 1 (null-out) has tokens well along its vector
  bias = rng.normal(size=B).astype(np.float32)
  factor = np.array([2.0, 0.0, -4.0, 0.0], np.float32)
  mask, ctx = _context(rng)
  edit = preference_vector(7)

  def ours(v, bias):
    return edit.apply({"vector": v, "bias": bias, "factor": jnp.asarray(factor)}, jnp.asarray(h), ctx)

  got = np.asarray(ours(jnp.asarray(v), jnp.asarray(bias)))
  tv, tb = torch.tensor(v, requires_grad=True), torch.tensor(bias, requires_grad=True)
  th = torch.tensor(h)
  rows = []
  for r in range(B):
    if factor[r] == 0:
      latent = torch.relu(th[r] @ tv[r] + tb[r])  # [T]
      rows.append(th[r] - (latent / (tv[r] @ tv[r]))[:, None] * tv[r])
    else:
      rows.append(th[r] + (float(factor[r]) + tb[r]) * tv[r])
  want = torch.where(torch.tensor(mask)[..., None], torch.stack(rows), th)
  np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-5)
  weights = rng.normal(size=(B, T, D)).astype(np.float32)
  g_v, g_b = jax.grad(lambda v, b: jnp.sum(ours(v, b) * weights), (0, 1))(jnp.asarray(v), jnp.asarray(bias))
  (want * torch.tensor(weights)).sum().backward()
  np.testing.assert_allclose(np.asarray(g_v), tv.grad.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(g_b), tb.grad.numpy(), rtol=1e-4, atol=1e-4)
  null_rows = got[1][mask[1]] @ v[1] + bias[1]
  assert (null_rows <= 1e-4).all()  # nulled out: no token keeps a positive latent
  assert np.abs(np.asarray(g_v)[1]).max() > 0 and np.abs(np.asarray(g_b)[0]).max() > 0


def test_loreft_with_a_factor_per_row():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  h = rng.normal(size=(B, T, D)).astype(np.float32)
  u = rng.normal(size=(B, R, D)).astype(np.float32)
  w = rng.normal(size=(B, R, D)).astype(np.float32) * 0.3
  b = rng.normal(size=(B, R)).astype(np.float32)
  factor = np.array([0.2, 1.0, -1.4, 2.0], np.float32)
  mask, ctx = _context(rng)
  site = loreft(3)

  def ours(w):
    return site.apply({"rotation": jnp.asarray(u), "weight": w, "bias": jnp.asarray(b),
                       "factor": jnp.asarray(factor)}, jnp.asarray(h), ctx)

  got = np.asarray(ours(jnp.asarray(w)))
  rot = np.asarray(orthonormal_rows(jnp.asarray(u)))  # R's parametrisation is tested in test_loreft_torch
  tw, tr, th = torch.tensor(w, requires_grad=True), torch.tensor(rot), torch.tensor(h)
  # h + R^T (alpha (W h + b - R h)), per row
  inner = th @ tw.transpose(1, 2) + torch.tensor(b)[:, None, :] - th @ tr.transpose(1, 2)
  want = th + (torch.tensor(factor)[:, None, None] * inner) @ tr
  want = torch.where(torch.tensor(mask)[..., None], want, th)
  np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-5)
  weights = rng.normal(size=(B, T, D)).astype(np.float32)
  g_w = jax.grad(lambda w: jnp.sum(ours(w) * weights))(jnp.asarray(w))
  (want * torch.tensor(weights)).sum().backward()
  np.testing.assert_allclose(np.asarray(g_w), tw.grad.numpy(), rtol=1e-4, atol=1e-4)
  plain = np.asarray(site.apply({"rotation": jnp.asarray(u), "weight": jnp.asarray(w), "bias": jnp.asarray(b)},
                                jnp.asarray(h), ctx))
  np.testing.assert_allclose(got[1], plain[1], rtol=1e-5, atol=1e-5)  # alpha 1 is plain LoReFT
  assert not np.allclose(got[0], plain[0])
