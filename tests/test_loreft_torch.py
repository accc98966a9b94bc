"""LoReFT at two sites of a tiny random HF Gemma 3 equals a PyTorch implementation written from the formula
h + R^T (W h + b - R h) (forward hooks on the decoder layers, at the first and last prompt positions): logits and
gradients of W, b and the unconstrained rotation U; R = orthonormal_rows(U) has orthonormal rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.model.adapters import first_last_mask, init_loreft_params, loreft, orthonormal_rows
from conftest import padded_batch

SITES = (2, 4)
RANK = 4


@pytest.fixture(scope="module")
def tiny(tiny_gemma3):
  return axjax.load(tiny_gemma3[1])


def site_params(config, seed):
  """Random params per site; U is a raw Gaussian matrix (not orthonormal), so the QR map itself is exercised."""
  keys = jax.random.split(jax.random.key(seed), 2 * len(SITES))
  out = []
  for i in range(len(SITES)):
    p = init_loreft_params(config, keys[2 * i], RANK)
    p["rotation"] = jax.random.normal(keys[2 * i + 1], (RANK, config.hidden_size))
    p["weight"] = p["weight"] * 20.0  # a large edit, so the sites matter
    out.append(p)
  return tuple(out)


def torch_rotation(u):
  """Rows of u orthonormalised in order: QR of u^T, signs fixed so the triangular factor's diagonal is positive."""
  torch = pytest.importorskip("torch")
  q, tri = torch.linalg.qr(u.T)
  sign = torch.where(torch.diagonal(tri) < 0, -1.0, 1.0)
  return (q * sign).T


def torch_logits(model, ids, mask, where, params):
  """HF logits with LoReFT applied by forward hooks to the outputs of the SITES layers at `where` [B, T]."""
  torch = pytest.importorskip("torch")
  where_t = torch.tensor(where)[..., None]

  def hook(p):
    def edit(module, inputs, output):
      h = output[0] if isinstance(output, tuple) else output
      r = torch_rotation(p["rotation"])
      edited = h + (h @ p["weight"].T + p["bias"] - h @ r.T) @ r
      h = torch.where(where_t, edited, h)
      return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
    return edit

  hooks = [model.model.layers[layer].register_forward_hook(hook(p)) for layer, p in zip(SITES, params)]
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  try:
    return model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=torch.tensor(positions)).logits
  finally:
    for h in hooks:
      h.remove()


def test_logits_and_gradients_equal_torch(tiny_gemma3, tiny):
  torch = pytest.importorskip("torch")
  model, _ = tiny_gemma3
  ids, mask = padded_batch(np.random.default_rng(0), 128, lengths=[12, 8, 4], width=12)
  where = np.asarray(first_last_mask(jnp.asarray(mask), 3, 3))
  weights = np.random.default_rng(1).normal(size=(*ids.shape, 128)).astype(np.float32) * mask[..., None]
  params = site_params(tiny.config, 2)
  torch_params = [{k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in p.items()} for p in params]
  logits = torch_logits(model, ids, mask, where, torch_params)
  loss = (logits.log_softmax(-1) * torch.tensor(weights)).sum()
  leaves = [p[k] for p in torch_params for k in ("rotation", "weight", "bias")]
  want_grads = [g.numpy() for g in torch.autograd.grad(loss, leaves)]

  def run(p):
    return axjax.forward(tiny.params, tiny.config, ids, mask, intervention=tuple(map(loreft, SITES)),
                         intervention_params=p, intervention_mask=where).logits

  got = np.asarray(run(params))
  plain = np.asarray(axjax.forward(tiny.params, tiny.config, ids, mask).logits)
  assert np.abs(got - plain)[mask].max() > 1e-1  # the sites matter
  assert np.abs(got - logits.detach().numpy())[mask].max() <= 1e-4
  grads = jax.grad(lambda p: jnp.sum(jax.nn.log_softmax(run(p), axis=-1) * weights))(params)
  mine = [np.asarray(g[k]) for g in grads for k in ("rotation", "weight", "bias")]
  for i, (a, b) in enumerate(zip(mine, want_grads)):
    assert np.abs(b).max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max(), err_msg=f"leaf {i}")


def test_rotation_rows_are_orthonormal_and_kept_when_already_so():
  u = jax.random.normal(jax.random.key(3), (2, RANK, 64)) * 3.0  # with a batch axis
  r = np.asarray(orthonormal_rows(u))
  np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(RANK), (2, RANK, RANK)), atol=1e-5)
  np.testing.assert_allclose(np.asarray(orthonormal_rows(r)), r, atol=1e-5)  # pyreft's rotations import as they are
  np.testing.assert_allclose(np.asarray(orthonormal_rows(u[0] * 5.0)), r[0], atol=1e-5)  # row scale does not matter


def test_first_last_mask_takes_first_and_last_real_tokens():
  mask = np.zeros((3, 12), bool)
  mask[0, :] = True
  mask[1, 4:] = True  # 8 real tokens, left-padded
  mask[2, 9:] = True  # 3 real tokens: fewer than first + last, covered whole
  got = np.asarray(first_last_mask(jnp.asarray(mask), 3, 3))
  want = np.zeros_like(mask)
  want[0, [0, 1, 2, 9, 10, 11]] = True
  want[1, [4, 5, 6, 9, 10, 11]] = True
  want[2, 9:] = True
  np.testing.assert_array_equal(got, want)
