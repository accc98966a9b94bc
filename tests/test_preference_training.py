"""RePS training on a tiny random Gemma 3 (preference_training): a step's loss and gradients equal a PyTorch
computation written from the reference doc's formulas on the HF model (the edits by forward hooks, per-row
factors, summed response log-probs, scaled_simpo over the add and sub pairs); joint training equals each
concept alone; training moves the steered model towards y_c and the null-out away from it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.data.examples import LMExamples
from axjax.data.preference_examples import PreferenceExamples
from axjax.errors import AxjaxError
from axjax.methods.activations import layer_activations
from axjax.generation.sampling import SamplingConfig
from axjax.methods.preference_training import (PreferenceEdit, prepare_preference, reference_logps, shared_arrays,
                                               train_preference)
from axjax.model.adapters import first_last_mask
from axjax.steering_eval.adapter_generation import steer_generate

T, PER_CONCEPT, CONCEPTS, SEED = 24, 4, 2, 3
HP = {"batch_size": 2, "gradient_accumulation_steps": 1, "n_epochs": 2, "lr": 0.04, "weight_decay": 0.0,
      "max_grad_norm": 1.0, "factors": [2.0, 4.0, 6.0], "loss_type": "scaled_simpo", "length_norm": "sequence",
      "subtraction": "negate"}
EDITS = {"vector": PreferenceEdit("vector", (2,)), "LoReFT": PreferenceEdit("LoReFT", (2, 4), positions=(3, 3)),
         "LoRA": PreferenceEdit("LoRA", (2, 4))}


def _examples(rng, prompt_lengths, response_lengths):
  rows = len(prompt_lengths)
  lengths = prompt_lengths + response_lengths
  t = np.arange(T)[None]
  mask = t < lengths[:, None]
  tokens = np.where(mask, rng.integers(1, 128, (rows, T)), 0).astype(np.int32)
  return LMExamples(
      concept_ids=np.array([4, 9], np.int32), index=np.arange(rows, dtype=np.int32).reshape(CONCEPTS, -1),
      labels=np.ones((CONCEPTS, PER_CONCEPT), np.int32), row_valid=np.ones((CONCEPTS, PER_CONCEPT), bool),
      texts=("",) * rows, tokens=tokens, attention_mask=mask, loss_mask=mask & (t >= prompt_lengths[:, None]),
      intervention_mask=mask & (t >= 1), prompt_lengths=prompt_lengths, prefix_length=1)


@pytest.fixture(scope="module")
def tiny(tiny_gemma3):
  """The model and 2 concepts x 4 examples: the same prompts with a concept response and an own response."""
  rng = np.random.default_rng(0)
  rows = CONCEPTS * PER_CONCEPT
  prompts = rng.integers(8, 12, rows).astype(np.int32)
  concept = _examples(rng, prompts, rng.integers(3, 8, rows))
  own = _examples(rng, prompts, rng.integers(3, 8, rows))
  own = dataclasses.replace(own, tokens=np.where(np.arange(T)[None] < prompts[:, None], concept.tokens, own.tokens))
  return axjax.load(tiny_gemma3[1]), PreferenceExamples(concept, own)


def _hp(edit, **changes):
  """HP with the sub pair as upstream's RePS configs have it: the vector's null-out, LoReFT's and LoRA's negation."""
  return {**HP, "subtraction": "null_out" if edit.kind == "vector" else "negate", **changes}


def _setup(model, examples, edit, hp, init=None):
  arrays = shared_arrays(edit, examples, hp["length_norm"])
  acts = np.asarray(layer_activations(model.params, model.config, arrays["tokens"], arrays["mask"], edit.after))
  reference = reference_logps(model.params, model.config, acts, arrays, edit.after)
  return prepare_preference(edit, model.config, examples, acts, reference, hp, seed=SEED, init=init), arrays


def _strong_init(model, edit):
  """Params large enough that the edits matter (LoRA's B is zero at initialisation)."""
  stack = edit.init(model.config, jax.random.split(jax.random.key(1), CONCEPTS))
  keys = jax.random.split(jax.random.key(2), 8)
  if edit.kind == "vector":
    return {"vector": stack["vector"] * 3.0, "bias": jnp.array([0.3, -0.2])}
  if edit.kind == "LoRA":
    return {**stack, "b": 0.5 * jax.random.normal(keys[0], stack["b"].shape)}
  return {**stack, "weight": stack["weight"] * 20.0, "bias": stack["bias"] * 5.0}


def torch_logps(torch, hf, edit, arrays, rows, factors, params):
  """Summed response log-probs of `rows` under the HF model edited per row as the reference doc writes it."""
  logits = torch_logits(torch, hf, edit, arrays["tokens"][rows], arrays["mask"][rows], arrays["positions"][rows],
                        factors, params)
  logp = logits[:, :-1].log_softmax(-1).gather(-1, torch.tensor(arrays["tokens"][rows][:, 1:], dtype=torch.long)
                                               [..., None])[..., 0]
  return (logp * torch.tensor(arrays["loss_mask"][rows][:, 1:])).sum(-1)


def torch_logits(torch, hf, edit, tokens, mask, positions, factors, params):
  """The HF model's logits [B, T, V] for right-padded `tokens`, edited at `positions` with a factor per row."""
  where = torch.tensor(positions)[..., None]
  factor = torch.tensor(factors)[:, None, None]

  def site_hook(apply):
    def hook(module, inputs, output):
      h = output[0] if isinstance(output, tuple) else output
      h = torch.where(where, apply(h), h)
      return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
    return hook

  hooks = []
  if params is None:
    pass  # the reference: the unedited model
  elif edit.kind == "vector":
    v, b = params["vector"], params["bias"]

    def vector_edit(h):  # (alpha + b) v, or for alpha = 0 the null-out -ReLU(h.v + b) / ||v||^2 v
      null = -torch.relu(h @ v + b)[..., None] / (v @ v)
      return h + torch.where(factor == 0, null, factor + b) * v
    hooks.append(hf.model.layers[edit.layers[0]].register_forward_hook(site_hook(vector_edit)))
  elif edit.kind == "LoReFT":
    for i, layer in enumerate(edit.layers):
      def loreft_edit(h, i=i):  # h + R^T (alpha (W h + b - R h)), R from U with orthonormal rows (QR, tested)
        q, tri = torch.linalg.qr(params["rotation"][i].T)
        r = (q * torch.where(torch.diagonal(tri) < 0, -1.0, 1.0)).T
        return h + (factor * (h @ params["weight"][i].T + params["bias"][i] - h @ r.T)) @ r
      hooks.append(hf.model.layers[layer].register_forward_hook(site_hook(loreft_edit)))
  else:
    for i, layer in enumerate(edit.layers):
      def lora_edit(module, inputs, output, i=i):  # o_proj(x) + x (alpha A B), every token
        return output + factor * (inputs[0] @ params["a"][i] @ params["b"][i])
      hooks.append(hf.model.layers[layer].self_attn.o_proj.register_forward_hook(lora_edit))
  position_ids = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  try:
    return hf(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
              position_ids=torch.tensor(position_ids)).logits
  finally:
    for h in hooks:
      h.remove()


@pytest.mark.parametrize("kind,subtraction", [("vector", "null_out"), ("vector", "negate"), ("LoReFT", "negate"),
                                              ("LoRA", "negate")])
def test_first_step_loss_and_gradients_equal_torch(tiny_gemma3, tiny, kind, subtraction):
  torch = pytest.importorskip("torch")
  model, examples = tiny
  edit = EDITS[kind]
  init = _strong_init(model, edit)
  setup, arrays = _setup(model, examples, edit, _hp(edit, subtraction=subtraction), init=init)
  losses, grads, step = _first_step(setup, model)
  hf = tiny_gemma3[0]
  for c in range(CONCEPTS):
    rows, factors = np.asarray(step.rows[c]), np.asarray(step.extra["factor"][c], np.float32)
    # Per example: add winner = prompt + y_c, add loser = prompt + y, sub winner = y, sub loser = y_c.
    offset = len(examples.concept.tokens)
    assert (rows[0::4] < offset).all() and (rows[1::4] == rows[0::4] + offset).all()
    assert (rows[2::4] == rows[1::4]).all() and (rows[3::4] == rows[0::4]).all()
    assert set(factors[0::4]) | set(factors[1::4]) <= set(HP["factors"])
    sub = factors[np.r_[2:len(rows):4, 3:len(rows):4]]
    assert (sub == 0).all() if subtraction == "null_out" else set(-sub) <= set(HP["factors"])
    params = {k: torch.tensor(np.asarray(v[c]), requires_grad=True) for k, v in init.items()}
    policy = torch_logps(torch, hf, edit, arrays, rows, factors, params)
    with torch.no_grad():
      ref = torch_logps(torch, hf, edit, arrays, rows, factors, None)
    np.testing.assert_allclose(setup.arrays["reference"][rows], ref.numpy(), rtol=1e-4, atol=1e-3)
    lengths = torch.tensor(arrays["length"][rows])
    w, l = slice(0, None, 2), slice(1, None, 2)  # pairs: (add winner, add loser), (sub winner, sub loser)
    scale = torch.clamp(ref[l] - ref[w], min=1.0)
    pair_losses = -torch.nn.functional.logsigmoid(scale / lengths[w] * policy[w] - policy[l] / lengths[l])
    loss = pair_losses.mean()
    loss.backward()
    np.testing.assert_allclose(losses[c], loss.item(), rtol=2e-5)
    for key, p in params.items():
      want = p.grad.numpy()
      assert np.abs(want).max() > 0, key
      np.testing.assert_allclose(np.asarray(grads[key][c]), want, rtol=2e-4, atol=2e-4 * np.abs(want).max(),
                                 err_msg=key)


@pytest.mark.parametrize("kind", ["vector", "LoReFT"])
def test_lm_objective_equals_torch(tiny_gemma3, tiny, kind):
  """The "Lang." rows: each example's concept response steered with a drawn factor, HF's mean NLL over the
  batch's response tokens."""
  torch = pytest.importorskip("torch")
  model, examples = tiny
  edit = EDITS[kind]
  init = _strong_init(model, edit)
  setup, arrays = _setup(model, examples, edit, _hp(edit, loss_type="lm"), init=init)
  losses, grads, step = _first_step(setup, model)
  for c in range(CONCEPTS):
    rows, factors = np.asarray(step.rows[c]), np.asarray(step.extra["factor"][c], np.float32)
    assert len(rows) == HP["batch_size"] and (rows < len(examples.concept.tokens)).all()
    assert set(factors) <= set(HP["factors"])
    params = {k: torch.tensor(np.asarray(v[c]), requires_grad=True) for k, v in init.items()}
    loss = -torch_logps(torch, tiny_gemma3[0], edit, arrays, rows, factors, params).sum() / float(
        arrays["loss_mask"][rows][:, 1:].sum())
    loss.backward()
    np.testing.assert_allclose(losses[c], loss.item(), rtol=2e-5)
    for key, p in params.items():
      np.testing.assert_allclose(np.asarray(grads[key][c]), p.grad.numpy(), rtol=2e-4,
                                 atol=2e-4 * np.abs(p.grad.numpy()).max(), err_msg=key)


def _first_step(setup, model):
  """The objective's per-concept losses and gradients on the first step, gathered as joint_step gathers them."""
  step = setup.batches[0]
  batch = {k: jnp.asarray(v)[step.rows] for k, v in setup.arrays.items()}
  batch.update({k: jnp.asarray(v) for k, v in step.extra.items()}, weight=jnp.asarray(step.weight, jnp.float32))
  total = lambda p: setup.objectives[0].joint(p, batch, 0.0, model.params)[0]
  return np.asarray(total(setup.init)), jax.grad(lambda p: jnp.sum(total(p)))(setup.init), step


def test_null_out_is_refused_for_loreft(tiny):
  model, examples = tiny
  with pytest.raises(AxjaxError, match="null_out for a steering vector only"):
    _setup(model, examples, EDITS["LoReFT"], _hp(EDITS["LoReFT"], subtraction="null_out"))


def test_joint_training_equals_each_concept_alone(tiny):
  model, examples = tiny
  edit = EDITS["vector"]
  arrays = shared_arrays(edit, examples, HP["length_norm"])
  acts = np.asarray(layer_activations(model.params, model.config, arrays["tokens"], arrays["mask"], edit.after))
  joint, record = train_preference(edit, model.params, model.config, examples, acts, _hp(edit), seed=SEED)
  assert record["loss"].shape == (4, CONCEPTS) and np.isfinite(record["loss"]).all()
  for c in range(CONCEPTS):
    one = lambda e: dataclasses.replace(e, concept_ids=e.concept_ids[c:c + 1], index=e.index[c:c + 1],
                                        labels=e.labels[c:c + 1], row_valid=e.row_valid[c:c + 1])
    alone, alone_record = train_preference(edit, model.params, model.config,
                                           PreferenceExamples(one(examples.concept), one(examples.own)), acts,
                                           _hp(edit), seed=SEED)
    np.testing.assert_allclose(alone_record["loss"][:, 0], record["loss"][:, c], rtol=1e-5)
    for key in joint:
      np.testing.assert_allclose(alone[key][0], joint[key][c], rtol=1e-4, atol=1e-6, err_msg=key)


def test_training_moves_towards_the_concept_and_the_null_out_away(tiny):
  """After training, steering with a training factor raises log p(y_c) - log p(y) over its value at the start,
  and the null-out raises log p(y) - log p(y_c)."""
  model, examples = tiny
  edit = EDITS["vector"]
  hp = _hp(edit, n_epochs=6, lr=0.1)
  setup, arrays = _setup(model, examples, edit, hp)
  acts = setup.arrays["acts"]
  trained, _ = train_preference(edit, model.params, model.config, examples, acts, hp, seed=SEED)
  concept_rows = examples.concept.index.reshape(-1)
  own_rows = examples.own.index.reshape(-1) + len(examples.concept.tokens)

  def margin(params, factor):
    """Mean over examples of log p(y_c) - log p(y), each concept's rows steered with its own params."""
    out = []
    for c in range(CONCEPTS):
      rows = np.concatenate([concept_rows, own_rows]).reshape(2, CONCEPTS, -1)[:, c].reshape(-1)
      p = {k: jnp.asarray(v[c]) for k, v in params.items()}
      logps = np.asarray(_steered_logps(model, edit, arrays, acts, rows, p, factor))
      half = len(rows) // 2
      out.append(np.mean(logps[:half] - logps[half:]))
    return np.mean(out)

  start = {k: np.asarray(v) for k, v in setup.init.items()}
  added, nulled = (margin(trained, 4.0), margin(start, 4.0)), (margin(trained, 0.0), margin(start, 0.0))
  assert added[0] > added[1] + 0.25 and nulled[0] < nulled[1] - 0.02, (added, nulled)


def _steered_logps(model, edit, arrays, acts, rows, params, factor):
  """Summed response log-probs of `rows` with one concept's edit at one factor (via the library's forward)."""
  from axjax.model.lm_loss import token_nll
  from axjax.model.transformer import run_above
  h = run_above(model.params, model.config, jnp.asarray(acts[rows]), jnp.asarray(arrays["mask"][rows]), edit.after,
                intervention_mask=jnp.asarray(arrays["positions"][rows]),
                **edit.edits(params, jnp.full(len(rows), factor, jnp.float32)))
  tokens = arrays["tokens"][rows]
  nll = token_nll(model.params, model.config, h[:, :-1].reshape(-1, h.shape[-1]), jnp.asarray(tokens[:, 1:]).reshape(-1))
  return -jnp.sum(nll.reshape(len(rows), -1) * arrays["loss_mask"][rows][:, 1:], -1)


def test_killed_training_resumes_from_its_last_epoch_to_identical_numbers(tiny, tmp_path):
  model, examples = tiny
  edit = EDITS["vector"]
  arrays = shared_arrays(edit, examples, HP["length_norm"])
  acts = np.asarray(layer_activations(model.params, model.config, arrays["tokens"], arrays["mask"], edit.after))
  run = lambda progress, folder=str(tmp_path): train_preference(
      edit, model.params, model.config, examples, acts, _hp(edit), seed=SEED, progress=progress,
      checkpoint_dir=folder)

  def kill_in_epoch_two(step, values):
    if step == 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    run(kill_in_epoch_two)
  steps = []
  resumed, resumed_record = run(lambda step, values: steps.append(step))
  assert steps == [2, 3]  # epoch 2 only (2 steps per epoch)
  whole, whole_record = run(None, str(tmp_path / "whole"))
  for key, value in whole.items():
    np.testing.assert_array_equal(resumed[key], value)
  np.testing.assert_array_equal(resumed_record["loss"], whole_record["loss"])


@pytest.mark.parametrize("kind", ["LoReFT", "LoRA"])
def test_steered_generation_applies_each_rows_factor_as_torch(torch, tiny_gemma3, tiny, kind):
  """Rows of both concepts in one compiled decode, each with its own factor (negative: suppression), greedily
  pick the token the torch model edited with that concept's params and factor ranks first (LoReFT edits the
  prompt's first and last tokens, LoRA every token)."""
  model, examples = tiny
  edit = EDITS[kind]
  params = _strong_init(model, edit)
  prompt = 8  # every prompt holds at least 8 tokens: rows of one length, no padding
  tokens = examples.concept.tokens[:, :prompt]
  mask = np.ones_like(tokens, bool)
  index = np.array([0, 1, 0, 1, 1, 0, 0, 1])
  factors = np.array([0.5, 2.0, -1.0, 1.0, -2.0, 3.0, 0.0, 1.5], np.float32)
  out = steer_generate(model.params, model.config, edit.adapters, params, index, tokens, mask, jax.random.key(0),
                       SamplingConfig(max_new_tokens=1, temperature=0.0), factors=factors)
  where = np.asarray(first_last_mask(jnp.asarray(mask), *edit.positions)) if kind == "LoReFT" else mask
  stack = {k: torch.tensor(np.asarray(v)[index]) for k, v in params.items()}
  want = []
  for row in range(len(index)):  # the torch hooks take one concept's params
    one = {k: v[row] for k, v in stack.items()}
    logits = torch_logits(torch, tiny_gemma3[0], edit, tokens[row:row + 1], mask[row:row + 1], where[row:row + 1],
                          factors[row:row + 1], one)
    want.append(int(logits[0, -1].argmax()))
  plain = torch_logits(torch, tiny_gemma3[0], edit, tokens, mask, where, factors, None)[:, -1].argmax(-1).tolist()
  assert np.asarray(out.tokens)[:, 0].tolist() == want
  assert want != plain  # the edits change the greedy token: the comparison can fail
