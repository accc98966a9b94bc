"""axjax's LoRA on o_proj equals peft's (rsLoRA, AxBench's lora.py settings) on a tiny random HF Gemma 3: logits,
gradients of the adapter, and per-row adapters in one batch."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.model import adapters as adapter_lib
from axjax.model.adapters import Lora
from conftest import padded_batch

LAYERS = (1, 4)
RANK = 4


@pytest.fixture(scope="module")
def setup(tiny_gemma3):
  """(peft model with random non-zero adapters, axjax model, the same adapters as axjax params)."""
  torch = pytest.importorskip("torch")
  peft = pytest.importorskip("peft")
  model, folder = tiny_gemma3
  config = peft.LoraConfig(r=RANK, lora_alpha=32, use_rslora=True, target_modules=["o_proj"],
                           layers_to_transform=list(LAYERS), lora_dropout=0.0)
  wrapped = peft.get_peft_model(copy.deepcopy(model), config).eval()  # the shared fixture stays untouched
  torch.manual_seed(1)
  a, b = [], []
  for layer in LAYERS:
    o_proj = wrapped.base_model.model.model.layers[layer].self_attn.o_proj
    with torch.no_grad():
      o_proj.lora_A["default"].weight.normal_(0.0, 0.3)  # [r, d_in]
      o_proj.lora_B["default"].weight.normal_(0.0, 0.3)  # [d, r]
    a.append(o_proj.lora_A["default"].weight.detach().numpy().T)
    b.append(o_proj.lora_B["default"].weight.detach().numpy().T)
  return wrapped, axjax.load(folder), {"a": jnp.asarray(np.stack(a)), "b": jnp.asarray(np.stack(b))}


def adapters(wrapped):
  """peft's lora_A and lora_B weight tensors of the targeted layers, in layer order."""
  layers = wrapped.base_model.model.model.layers
  return [(layers[i].self_attn.o_proj.lora_A["default"].weight, layers[i].self_attn.o_proj.lora_B["default"].weight)
          for i in LAYERS]


def peft_logits(wrapped, ids, mask):
  torch = pytest.importorskip("torch")
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # HF's positions for left padding
  return wrapped(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=torch.tensor(positions)).logits


def test_logits_equal_peft(setup):
  torch = pytest.importorskip("torch")
  wrapped, lm, params = setup
  ids, mask = padded_batch(np.random.default_rng(0), 128, lengths=[12, 7], width=12)
  with torch.no_grad():
    want = peft_logits(wrapped, ids, mask).numpy()
  got = np.asarray(axjax.forward(lm.params, lm.config, ids, mask, lora=Lora(LAYERS), lora_params=params).logits)
  plain = np.asarray(axjax.forward(lm.params, lm.config, ids, mask).logits)
  assert np.abs(got - plain)[mask].max() > 1e-2  # the adapters matter
  assert np.abs(got - want)[mask].max() <= 1e-4


def test_gradients_of_the_adapters_equal_torch(setup):
  torch = pytest.importorskip("torch")
  wrapped, lm, params = setup
  ids, mask = padded_batch(np.random.default_rng(1), 128, lengths=[10, 6], width=10)
  weights = np.random.default_rng(2).normal(size=(2, 10, 128)).astype(np.float32) * mask[..., None]
  tensors = [t for pair in adapters(wrapped) for t in pair]
  loss = (peft_logits(wrapped, ids, mask).log_softmax(-1) * torch.tensor(weights)).sum()  # touches every logit
  grads = [g.numpy() for g in torch.autograd.grad(loss, tensors)]

  def jax_loss(p):
    logits = axjax.forward(lm.params, lm.config, ids, mask, lora=Lora(LAYERS), lora_params=p).logits
    return jnp.sum(jax.nn.log_softmax(logits, axis=-1) * weights)

  got = jax.grad(jax_loss)(params)
  for i in range(len(LAYERS)):
    for name, want in (("a", grads[2 * i]), ("b", grads[2 * i + 1])):
      mine = np.asarray(got[name][i]).T  # back to peft's [r, d_in] / [d, r]
      np.testing.assert_allclose(mine, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=f"{name}{i}")


def test_per_row_adapters_equal_each_row_alone(setup):
  _, lm, params = setup
  ids, mask = padded_batch(np.random.default_rng(3), 128, lengths=[9, 5], width=9)
  other = jax.tree.map(lambda x: x[::-1] * 0.7, params)  # a second adapter: layers swapped and scaled
  per_row = jax.tree.map(lambda x, y: jnp.stack([x, y]), params, other)
  run = lambda rows, p: np.asarray(axjax.forward(lm.params, lm.config, ids[rows], mask[rows], lora=Lora(LAYERS),
                                                 lora_params=p).logits)
  together = run(slice(None), per_row)
  np.testing.assert_allclose(together[0][mask[0]], run(slice(0, 1), params)[0][mask[0]], atol=1e-5)
  np.testing.assert_allclose(together[1][mask[1]], run(slice(1, 2), other)[0][mask[1]], atol=1e-5)


def test_dropout_acts_only_with_a_key(setup):
  _, lm, params = setup
  ids, mask = padded_batch(np.random.default_rng(4), 128, lengths=[8], width=8)
  run = lambda lora, rng: np.asarray(axjax.forward(lm.params, lm.config, ids, mask, lora=lora, lora_params=params,
                                                   lora_rng=rng).logits)
  key = jax.random.key(0)
  train = Lora(LAYERS, dropout=0.05)
  np.testing.assert_array_equal(run(train, None), run(Lora(LAYERS, dropout=0.0), None))
  np.testing.assert_array_equal(run(train, key), run(train, key))
  assert not np.allclose(run(train, key), run(train, None))
  assert not np.allclose(run(train, key), run(train, jax.random.key(1)))
  np.testing.assert_array_equal(run(Lora(LAYERS, dropout=0.0), key), run(train, None))


def test_dropout_of_a_token_does_not_depend_on_the_padded_width(setup):
  """A row's first 8 tokens get the same dropout (the same logits there) whether the batch is padded to 8 or 32
  wide, so a concept trains alike in any chunk of concepts; the rate is LoRA's."""
  _, lm, params = setup
  ids, mask = padded_batch(np.random.default_rng(5), 128, lengths=[8, 8], width=8)
  wide_ids, wide_mask = np.pad(ids, ((0, 0), (0, 24))), np.pad(mask, ((0, 0), (0, 24)))  # right padding
  train, key = Lora(LAYERS, dropout=0.05), jax.random.key(3)
  run = lambda i, m: np.asarray(axjax.forward(lm.params, lm.config, i, m, lora=train, lora_params=params,
                                              lora_rng=key).logits)
  np.testing.assert_allclose(run(wide_ids, wide_mask)[:, :8], run(ids, mask), atol=1e-5)
  keep = np.asarray(adapter_lib._keep_mask(key, 0.95, (64, 32, 256)))
  assert abs(keep.mean() - 0.95) < 0.005 and 0.9 < keep[:, :, 0].mean() < 1.0
