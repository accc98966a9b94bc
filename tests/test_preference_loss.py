"""RePS's preference losses against torch written from the reference doc's formulas (section 6): values and
gradients in the policy's log-probs, for every loss type; the sequence log-probs and lengths against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axjax.errors import AxjaxError
from axjax.methods.preference_loss import PreferenceLoss, normalising_lengths, sequence_logps


def torch_losses(torch, loss_type, pw, pl, rw, rl, lw, ll, beta=1.0, gamma=0.0):
  F = torch.nn.functional
  if loss_type == "scaled_simpo":  # -logsigmoid(max(ref_l - ref_w, 1) / |w| * logp_w - logp_l / |l|)
    scaler = torch.clamp(rl - rw, min=1.0)
    return -F.logsigmoid(scaler / lw * pw - pl / ll)
  if loss_type == "dpo":
    return -F.logsigmoid(beta * ((pw - pl) - (rw - rl)))
  return -F.logsigmoid(beta / lw * pw - beta / ll * pl - gamma)


@pytest.mark.parametrize("loss_type,beta,gamma", [("scaled_simpo", 1.0, 0.0), ("dpo", 0.5, 0.0),
                                                  ("simpo", 2.0, 0.3)])
def test_losses_and_gradients_equal_torch(loss_type, beta, gamma):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  p = 16
  pw, pl = -rng.uniform(5, 80, p), -rng.uniform(5, 80, p)
  rw, rl = pw + rng.normal(0, 5, p), pl + rng.normal(0, 5, p)
  rl[:4] = rw[:4] - 3.0  # the reference prefers the loser less than by 1 nat: RePS's scale clamps at 1
  lw, ll = rng.integers(10, 60, p).astype(np.float64), rng.integers(10, 60, p).astype(np.float64)
  loss = PreferenceLoss(loss_type, beta, gamma)
  args = [jnp.asarray(a, jnp.float32) for a in (pw, pl, rw, rl, lw, ll)]
  got = np.asarray(loss(*args))
  grad_w, grad_l = jax.grad(lambda w, l: jnp.sum(loss(w, l, *args[2:])), (0, 1))(args[0], args[1])
  t = [torch.tensor(a, dtype=torch.float64, requires_grad=i < 2) for i, a in enumerate((pw, pl, rw, rl, lw, ll))]
  want = torch_losses(torch, loss_type, *t, beta=beta, gamma=gamma)
  want.sum().backward()
  np.testing.assert_allclose(got, want.detach().numpy(), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad_w), t[0].grad.numpy(), rtol=2e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad_l), t[1].grad.numpy(), rtol=2e-4, atol=1e-7)
  assert np.abs(np.asarray(grad_w)).min() > 0  # every pair teaches something


def test_sequence_logps_and_lengths_equal_numpy():
  rng = np.random.default_rng(1)
  logps = -rng.uniform(0, 5, (3, 8)).astype(np.float32)
  attention = np.array([[1] * 8, [1] * 6 + [0] * 2, [1] * 3 + [0] * 5], bool)
  response = attention & (np.arange(8) >= 2)
  response[:, -1] = False
  np.testing.assert_allclose(sequence_logps(logps, response), [logps[r][response[r]].sum() for r in range(3)],
                             rtol=1e-6)
  np.testing.assert_array_equal(normalising_lengths(attention, response, "sequence"), [8, 6, 3])
  np.testing.assert_array_equal(normalising_lengths(attention, response, "response"), [5, 4, 1])
  with pytest.raises(AxjaxError, match="unknown length normaliser 'prompt'"):
    normalising_lengths(attention, response, "prompt")
  with pytest.raises(AxjaxError, match="unknown preference loss 'ipo'"):
    PreferenceLoss("ipo")
