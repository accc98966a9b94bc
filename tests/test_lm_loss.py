"""Chunked cross-entropy equals log-softmax of full logits: value and gradient in h (custom VJP).

The reference tests compare with an independent PyTorch computation (full logits, cross_entropy, autograd); the
`torch` fixture skips them when PyTorch is absent (as in conftest.py). The others compare with axjax's own
full-logit `unembed` and need only JAX.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.model.lm_loss import token_nll
from axjax.model.transformer import unembed

N, D, V, CHUNK = 37, 48, 1000, 128  # 1000 = 7 * 128 + 104: the last chunk is padded


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


def _config(cap):
  return axjax.PRESETS["gemma-2-2b"].replace(vocab_size=V, hidden_size=D, final_logit_softcap=cap)


def _problem(seed=0, n=N, table_std=3.0):
  """Logits have std ~7 * table_std: ~3 spreads the softmax over many tokens; ~20 saturates a soft-cap of 30
  (many logits just under the cap, so the softmax is spread and the cap's derivative far from 1)."""
  k = jax.random.split(jax.random.key(seed), 4)
  params = {"final_norm": {"scale": jax.random.normal(k[0], (D,)) * 0.3},
            "embed": jax.random.normal(k[1], (V, D)) * table_std}
  h = jax.random.normal(k[2], (n, D)) * 5.0
  targets = jax.random.randint(k[3], (n,), 0, V).at[0].set(0).at[1].set(V - 1)  # first and last (padded) chunk
  return params, h, targets


def _torch_nll_and_grad(torch, params, h, targets, cap, eps):
  """Gemma's final norm x * rsqrt(mean(x^2) + eps) * (1 + w), tied unembedding, optional tanh soft-cap, CE; f64."""
  f64 = lambda a: torch.tensor(np.asarray(jnp.asarray(a, jnp.float32)), dtype=torch.float64)
  th = f64(h).requires_grad_(True)
  scale, table = f64(params["final_norm"]["scale"]), f64(params["embed"])
  x = th * torch.rsqrt(th.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + scale)
  logits = x @ table.T
  if cap:
    logits = torch.tanh(logits / cap) * cap
  nll = torch.nn.functional.cross_entropy(logits, torch.tensor(np.asarray(targets), dtype=torch.long),
                                          reduction="none")
  (grad,) = torch.autograd.grad(nll.sum(), th)
  return nll.detach().numpy(), grad.numpy()


@pytest.mark.parametrize("cap,table_std", [(None, 0.5), (30.0, 0.5), (30.0, 3.0)])
def test_value_and_grad_match_torch_float32(torch, cap, table_std):
  config = _config(cap)
  params, h, targets = _problem(table_std=table_std)
  nll = token_nll(params, config, h, targets, chunk=CHUNK)
  grad = jax.grad(lambda h: token_nll(params, config, h, targets, chunk=CHUNK).sum())(h)
  ref_nll, ref_grad = _torch_nll_and_grad(torch, params, h, targets, cap, config.rms_norm_eps)
  assert nll.dtype == jnp.float32 and grad.dtype == jnp.float32
  np.testing.assert_allclose(nll, ref_nll, rtol=1e-5, atol=1e-5 * np.abs(ref_nll).max())
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-5 * np.abs(ref_grad).max())
  # The value-only path (no custom-VJP forward) agrees with the differentiated one.
  value, _ = jax.value_and_grad(lambda h: token_nll(params, config, h, targets, chunk=CHUNK).sum())(h)
  np.testing.assert_allclose(value, nll.sum(), rtol=1e-6)


@pytest.mark.parametrize("cap,table_std", [(None, 0.5), (30.0, 3.0)])
def test_value_and_grad_match_torch_bfloat16_inputs(torch, cap, table_std):
  config = _config(cap)
  params, h, targets = _problem(seed=1, table_std=table_std)
  params = {"final_norm": params["final_norm"], "embed": params["embed"].astype(jnp.bfloat16)}
  h = h.astype(jnp.bfloat16)
  nll = token_nll(params, config, h, targets, chunk=CHUNK)
  grad = jax.grad(lambda h: token_nll(params, config, h, targets, chunk=CHUNK).sum())(h)
  assert nll.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
  # Reference: float64 on the same bf16-rounded inputs; the normed rows are rounded to bf16 in axjax (as HF).
  ref_nll, ref_grad = _torch_nll_and_grad(torch, params, h, targets, cap, config.rms_norm_eps)
  grad = np.asarray(grad, np.float32)
  np.testing.assert_allclose(nll, ref_nll, rtol=2e-2, atol=2e-2 * np.abs(ref_nll).max())
  np.testing.assert_allclose(grad, ref_grad, rtol=5e-2, atol=2e-2 * np.abs(ref_grad).max())
  assert np.linalg.norm(grad - ref_grad) < 1e-2 * np.linalg.norm(ref_grad)


def test_chunked_nll_equals_full_log_softmax():
  config = axjax.PRESETS["gemma-2-2b"].replace(vocab_size=1000, hidden_size=32, num_layers=2,
                                               sliding_layers=(True, False))
  params = axjax.init_params(config, jax.random.key(0))
  params["final_norm"]["scale"] = jax.random.normal(jax.random.key(1), (32,)) * 0.3
  h = jax.random.normal(jax.random.key(2), (5, 32)) * 30.0  # large enough that the soft-cap matters
  targets = jnp.array([0, 3, 999, 500, 17])

  def full(h):
    logp = jax.nn.log_softmax(unembed(params, config, h), axis=-1)
    return -jnp.take_along_axis(logp, targets[:, None], axis=1)[:, 0]

  chunked = lambda h: token_nll(params, config, h, targets, chunk=128)  # 1000 is not a multiple of 128
  np.testing.assert_allclose(chunked(h), full(h), rtol=1e-5, atol=1e-5)
  g_full = jax.grad(lambda h: full(h).sum())(h)
  g_chunk = jax.grad(lambda h: chunked(h).sum())(h)
  np.testing.assert_allclose(g_chunk, g_full, rtol=1e-4, atol=1e-6)


def _full_nll(params, config, h, targets):
  logp = jax.nn.log_softmax(unembed(params, config, h), axis=-1)
  return -jnp.take_along_axis(logp, targets[:, None], axis=1)[:, 0]


def _weighted_mean(nll, w):
  return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


@pytest.mark.parametrize("cap", [None, 30.0])
def test_weighted_mean_grad_under_vmap_over_concepts_and_jit(cap):
  """As the trainer calls it: value_and_grad of a weighted mean, vmapped over concepts, the model an argument."""
  config = _config(cap)
  params, _, _ = _problem(table_std=0.5)
  c = 3
  k = jax.random.split(jax.random.key(7), 3)
  h = jax.random.normal(k[0], (c, N, D)) * 5.0
  targets = jax.random.randint(k[1], (c, N), 0, V)
  weights = (jax.random.uniform(k[2], (c, N)) > 0.3).astype(jnp.float32)

  def loss(h, targets, w, model):
    return _weighted_mean(token_nll(model, config, h, targets, chunk=CHUNK), w)

  step = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(0, 0, 0, None)))
  values, grads = step(h, targets, weights, params)
  assert values.shape == (c,) and grads.shape == (c, N, D)
  ref = jax.vmap(jax.value_and_grad(lambda h, t, w: _weighted_mean(_full_nll(params, config, h, t), w)))
  ref_values, ref_grads = ref(h, targets, weights)
  np.testing.assert_allclose(values, ref_values, rtol=1e-5)
  np.testing.assert_allclose(grads, ref_grads, rtol=1e-4, atol=1e-5 * np.abs(ref_grads).max())
  # Plain jit (no vmap) of one concept gives the same gradient.
  v0, g0 = jax.jit(jax.value_and_grad(loss))(h[0], targets[0], weights[0], params)
  np.testing.assert_allclose(v0, values[0], rtol=1e-6)
  np.testing.assert_allclose(g0, grads[0], rtol=1e-5, atol=1e-6 * np.abs(ref_grads).max())


def test_norm_scale_gets_its_gradient_and_the_frozen_table_none():
  """The final norm sits outside the custom VJP, so its scale is differentiated; the table's gradient is zero
  by contract (it is frozen in every axjax objective)."""
  config = _config(30.0)
  params, h, targets = _problem(seed=3)
  g = jax.grad(lambda p: token_nll(p, config, h, targets, chunk=CHUNK).mean())(params)
  g_ref = jax.grad(lambda p: _full_nll(p, config, h, targets).mean())(params)
  np.testing.assert_allclose(g["final_norm"]["scale"], g_ref["final_norm"]["scale"], rtol=1e-4,
                             atol=1e-5 * np.abs(g_ref["final_norm"]["scale"]).max())
  assert not np.any(g["embed"])
