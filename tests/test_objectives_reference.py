"""The trained methods' losses, gradients and optimizer steps against PyTorch references written from AxBench.

The references do what AxBench's code does, independently of axjax: a tiny Hugging Face Gemma 3 runs whole,
a forward hook edits the output of decoder layer L at pyvene-style gathered positions (each row's list of
intervened positions padded to the batch's longest with the index of the row's first pad token), the loss is
HF's own next-token loss on output labels, and the optimizer step is torch's clip_grad_norm_, AxBench's
unit-norm-then-project order, and torch.optim.AdamW under a linear schedule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import axjax  # noqa: E402
from conftest import right_padded_batch  # noqa: E402
from axjax.methods.activations import layer_activations  # noqa: E402
from axjax.data.batching import packed_loss_positions  # noqa: E402
from axjax.methods.joint_training import OptimConfig, StepBatch, train_jointly  # noqa: E402
from axjax.methods.objectives import ProbeObjective, ReftR1Objective, SsvObjective, UpperModel  # noqa: E402

LAYER, PREFIX, PAD, TOPK = 2, 2, 0, 3
LENGTHS = np.array([14, 9, 11, 17])  # real tokens per row (BOS included), then one pad or more
PROMPTS = np.array([8, 5, 6, 9])  # the loss covers tokens from here on


@pytest.fixture(scope="module")
def setup(tiny_gemma3):
  hf, folder = tiny_gemma3
  lm = axjax.load(folder)
  width = int(LENGTHS.max()) + 3
  tokens, mask = right_padded_batch(np.random.default_rng(0), lm.config.vocab_size, LENGTHS, width, PAD)
  t = np.arange(width)[None]
  rows = np.arange(len(LENGTHS))
  index, valid = packed_loss_positions((t >= PROMPTS[:, None]) & mask, rows[None], np.ones((1, len(rows))))
  acts = layer_activations(lm.params, lm.config, tokens, mask, LAYER)
  batch = {"acts": acts, "mask": mask, "tokens": tokens,
           "position_mask": ((t >= PREFIX) & mask).astype(np.float32), "loss_index": index[0],
           "loss_valid": valid[0], "pad_acts": acts[np.arange(len(LENGTHS)), LENGTHS],
           "label": np.array([1, 0, 1, 0], np.int32), "weight": np.ones(len(LENGTHS), np.float32)}
  return hf, lm, {k: jnp.asarray(v) for k, v in batch.items()}


def gathered_positions(lengths, start):
  """pyvene's unit locations as AxBench's collator builds them: [start, len) padded with the index len."""
  longest = max(n - start for n in lengths)
  return [list(range(start, n)) + [n] * (longest - (n - start)) for n in lengths], \
         [[1] * (n - start) + [0] * (longest - (n - start)) for n in lengths]


def run_hooked(hf, tokens, intervene):
  """HF's loss with `intervene(hidden [B, T, d]) -> hidden` applied to the output of layer LAYER."""
  ids = torch.tensor(np.asarray(tokens), dtype=torch.long)
  labels = ids.clone()
  t = torch.arange(ids.shape[1])[None]
  labels[(t < torch.tensor(PROMPTS)[:, None]) | (t >= torch.tensor(LENGTHS)[:, None])] = -100
  hook = hf.model.layers[LAYER].register_forward_hook(lambda mod, args, out: intervene(out))
  try:
    return hf(input_ids=ids, attention_mask=(ids != PAD).long(), labels=labels).loss
  finally:
    hook.remove()


def torch_reft_r1(hf, tokens, w, progress, coeff):
  """AxBench's LsReFT forward (TopKReLUIntervention on gathered positions) and loss: LM + ramp * coeff * L1."""
  locations, masks = gathered_positions(LENGTHS, PREFIX)
  loc = torch.tensor(locations)
  imask = torch.tensor(masks, dtype=torch.float32)
  saved = {}

  def intervene(h):
    base = torch.gather(h, 1, loc[..., None].expand(-1, -1, h.shape[-1]))  # [B, S, d]
    latent = torch.relu(base @ w)
    top, top_idx = latent.topk(TOPK, dim=-1, sorted=False)
    saved["non_top"] = latent.clone().scatter(-1, top_idx, 0.0)
    out = base + top.mean(-1)[:, None, None] * w
    return h.scatter(1, loc[..., None].expand(-1, -1, h.shape[-1]), out)

  lm = run_hooked(hf, tokens, intervene)
  l1 = ((saved["non_top"] * imask).sum(-1) / (imask.sum(-1) + torch.finfo(torch.float32).eps)).mean()
  return lm + progress * coeff * l1


def torch_ssv(hf, tokens, v):
  """AxBench's SteeringVector: h + v at the gathered positions [prefix, len) (pad copies get it too)."""
  locations, _ = gathered_positions(LENGTHS, PREFIX)
  loc = torch.tensor(locations)[..., None]

  def intervene(h):
    idx = loc.expand(-1, -1, h.shape[-1])
    return h.scatter(1, idx, torch.gather(h, 1, idx) + v)

  return run_hooked(hf, tokens, intervene)


def torch_probe(acts, labels, w, coeff_l1):
  """AxBench's LinearProbe loss: BCELoss(sigmoid(h . w)) over gathered positions [1, len) + coeff * |w|_1."""
  locations, masks = gathered_positions(LENGTHS, 1)
  h = torch.tensor(np.asarray(acts))
  base = torch.gather(h, 1, torch.tensor(locations)[..., None].expand(-1, -1, h.shape[-1]))
  preds = torch.sigmoid(base @ w)
  keep = torch.tensor(masks).bool()
  y = torch.tensor(np.asarray(labels), dtype=torch.float32)[:, None].expand_as(preds)
  return torch.nn.BCELoss()(preds[keep], y[keep]) + coeff_l1 * w.abs().sum()


def value_and_grad_torch(fn, w0):
  w = torch.tensor(np.asarray(w0), requires_grad=True)
  loss = fn(w)
  loss.backward()
  return loss.item(), w.grad.numpy()


def value_and_grad_jax(objective, w0, batch, progress, params):
  (loss, _), grad = jax.value_and_grad(objective, has_aux=True)({"w": jnp.asarray(w0)}, batch, progress, params)
  return float(loss), np.asarray(grad["w"])


def random_w(lm, scale, seed=1):
  return (np.random.default_rng(seed).normal(size=lm.config.hidden_size) * scale).astype(np.float32)


@pytest.mark.parametrize("toward_pad", [1.0, -1.0])
def test_reft_r1_loss_and_gradient_equal_axbench(setup, toward_pad):
  """The top-k runs over gathered positions, pad copies included; progress 0.4 ramps the L1 weight. w leans
  toward (+1) or away from (-1) the pad tokens' states, so pad copies fill the top-k or stay out of it."""
  hf, lm, batch = setup
  pad = np.asarray(batch["pad_acts"]).mean(0)
  w0 = random_w(lm, 0.1) + toward_pad * pad / np.linalg.norm(pad)
  objective = ReftR1Objective(UpperModel(lm.config, LAYER), TOPK, coeff_l1=0.05)
  got_loss, got_grad = value_and_grad_jax(objective, w0, batch, 0.4, lm.params)
  want_loss, want_grad = value_and_grad_torch(lambda w: torch_reft_r1(hf, batch["tokens"], w, 0.4, 0.05), w0)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max())
  real_only = ReftR1Objective(UpperModel(lm.config, LAYER), TOPK, coeff_l1=0.05, pad_in_topk=False)
  differs = abs(value_and_grad_jax(real_only, w0, batch, 0.4, lm.params)[0] - want_loss) > 1e-4
  assert differs == (toward_pad > 0)  # pad copies change AxBench's loss exactly when they enter its top-k


def test_ssv_loss_and_gradient_equal_axbench(setup):
  hf, lm, batch = setup
  v0 = random_w(lm, 0.3, seed=2)
  got_loss, got_grad = value_and_grad_jax(SsvObjective(UpperModel(lm.config, LAYER)), v0, batch, 0.0, lm.params)
  want_loss, want_grad = value_and_grad_torch(lambda v: torch_ssv(hf, batch["tokens"], v), v0)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max())


@pytest.mark.parametrize("scale", [0.05, 30.0])
def test_probe_loss_and_gradient_equal_axbench_including_saturation(setup, scale):
  """At scale 30 most |h . w| exceed 17: torch's sigmoid rounds to 1 (or its BCE backward divides by 1e-12)
  and those tokens give no gradient; the loss is capped at 100 per token."""
  _, lm, batch = setup
  w0 = random_w(lm, scale, seed=3)
  logits = np.einsum("btd,d->bt", np.asarray(batch["acts"]), w0)
  scored = np.asarray(batch["position_mask"]) > 0  # [1, len) here, as prefix_length=1 for the probe
  batch = {**batch, "position_mask": jnp.asarray(((np.arange(logits.shape[1])[None] >= 1)
                                                  & np.asarray(batch["mask"])).astype(np.float32))}
  if scale > 1:
    assert (np.abs(logits[scored]) > 17).mean() > 0.5  # the saturated regime is really exercised
  got_loss, got_grad = value_and_grad_jax(ProbeObjective(coeff_l1=1e-3), w0, batch, 0.0, None)
  want_loss, want_grad = value_and_grad_torch(lambda w: torch_probe(batch["acts"], batch["label"], w, 1e-3), w0)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  # float32 sums of h * dL/dz with |h| up to ~1e3 differ in summation order: 1e-5 of the gradient's scale
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-5 * np.abs(want_grad).max())


def test_reft_r1_training_steps_equal_axbench_optimizer(setup):
  """Three steps of AxBench's LsReFT loop on one batch: clip to norm 1, renormalise w, project the gradient,
  AdamW under a linear schedule, L1 weight step/T; against torch's own clip_grad_norm_ and AdamW."""
  hf, lm, batch = setup
  steps, lr, coeff = 3, 0.01, 0.05
  w = torch.nn.Parameter(torch.full((lm.config.hidden_size,), 0.01))
  opt = torch.optim.AdamW([w], lr=lr, weight_decay=0.0)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / steps))
  for step in range(steps):
    loss = torch_reft_r1(hf, batch["tokens"], w, step / steps, coeff)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([w], 1.0)
    with torch.no_grad():
      w.data /= w.data.norm() + torch.finfo(torch.float32).eps
      w.grad -= (w.grad @ w.data) * w.data
    opt.step()
    sched.step()
    opt.zero_grad()
  objective = ReftR1Objective(UpperModel(lm.config, LAYER), TOPK, coeff_l1=coeff)
  cfg = OptimConfig(lr=lr, total_steps=steps, clip_norm=1.0, unit_norm_key="w")
  per_row = ("acts", "mask", "tokens", "position_mask", "pad_acts")
  examples = {k: batch[k] for k in per_row}
  rows = np.arange(len(LENGTHS))[None]
  extra = {"loss_index": batch["loss_index"][None], "loss_valid": batch["loss_valid"][None]}
  trained, record = train_jointly(cfg, objective, {"w": jnp.full((1, lm.config.hidden_size), 0.01)}, examples,
                                  [StepBatch(rows, np.ones_like(rows), extra)] * steps, frozen=lm.params)
  np.testing.assert_allclose(np.asarray(trained["w"][0]), w.detach().numpy(), rtol=1e-4, atol=1e-6)
  assert record["loss"].shape == (steps, 1) and np.isfinite(record["loss"]).all()
