"""The IG/IxG classifier and attributions against PyTorch references written from AxBench's ig.py.

The references run a tiny Hugging Face Gemma 3 whole: a forward hook replaces the output of decoder layer L by
a leaf tensor (AxBench's set_target_act_hook), the head is torch Linear layers holding the same weights, and
torch.autograd gives dP(class 1)/dh. IG is a plain torch loop over the 50 left-Riemann points; training is
AxBench's loop (CrossEntropyLoss on the softmax output, loss / accum, AdamW, HF's linear schedule).
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import transformers  # noqa: E402

import axjax  # noqa: E402
from conftest import right_padded_batch  # noqa: E402
from axjax.dictionary import Dictionary  # noqa: E402
from axjax.errors import AxjaxError  # noqa: E402
from axjax.methods import attribution  # noqa: E402

LAYER, PAD = 2, 0
LENGTHS = np.array([9, 14, 6])  # real tokens per row (right-padded, as AxBench's batches)
CONCEPT_OF_ROW = np.array([1, 0, 1])


@pytest.fixture(scope="module")
def setup(tiny_gemma3):
  hf, folder = tiny_gemma3
  lm = axjax.load(folder)
  width = int(LENGTHS.max()) + 2
  tokens, mask = right_padded_batch(np.random.default_rng(0), lm.config.vocab_size, LENGTHS, width, PAD)
  heads = attribution.init_classifiers(jax.random.key(3), 2, lm.config.hidden_size)
  heads = {k: np.asarray(v) * 4.0 for k, v in heads.items()}  # larger weights: P(class 1) away from 1/2
  return hf, lm, tokens, mask, heads


def torch_head(heads, c):
  """AxBench's LMClassification head (eval mode) with concept c's weights."""
  first, second = torch.nn.Linear(*heads["w1"].shape[1:]), torch.nn.Linear(*heads["w2"].shape[1:])
  with torch.no_grad():
    first.weight.copy_(torch.tensor(heads["w1"][c].T))
    first.bias.copy_(torch.tensor(heads["b1"][c]))
    second.weight.copy_(torch.tensor(heads["w2"][c].T))
    second.bias.copy_(torch.tensor(heads["b2"][c]))
  return lambda x: torch.softmax(second(torch.relu(first(x))), dim=-1)


def layer_output(hf, tokens, mask):
  """The residual stream after decoder layer LAYER, read with a forward hook."""
  seen = {}
  handle = hf.model.layers[LAYER].register_forward_hook(
      lambda mod, args, out: seen.update(h=out[0] if isinstance(out, tuple) else out))
  with torch.no_grad():
    hf.model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long))
  handle.remove()
  return seen["h"].clone()


def torch_prob_and_grad(hf, tokens, mask, heads, h):
  """P(class 1) per row under its own head and dP/dh, with the layer-LAYER output replaced by h."""
  h = h.detach().clone().requires_grad_(True)
  handle = hf.model.layers[LAYER].register_forward_hook(
      lambda mod, args, out: (h,) + tuple(out[1:]) if isinstance(out, tuple) else h)
  am = torch.tensor(mask, dtype=torch.long)
  try:
    last = hf.model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=am).last_hidden_state
  finally:
    handle.remove()
  states = last[torch.arange(len(tokens)), am.sum(1) - 1]
  probs = torch.stack([torch_head(heads, c)(states[b])[1] for b, c in enumerate(CONCEPT_OF_ROW)])
  probs.sum().backward()
  return probs.detach().numpy(), h.grad.numpy()


def assert_close(got, ref, rel=1e-4):
  got, ref = np.asarray(got), np.asarray(ref)
  assert got.shape == ref.shape
  assert np.abs(got - ref).max() <= rel * max(np.abs(ref).max(), 1e-6), np.abs(got - ref).max()


def test_last_token_states_match_hf_final_hidden_state(setup):
  hf, lm, tokens, mask, _ = setup
  with torch.no_grad():
    out = hf.model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long), output_hidden_states=True)
  ref = out.hidden_states[-1][torch.arange(len(tokens)), torch.tensor(LENGTHS) - 1].numpy()
  assert_close(attribution.last_token_states(lm.params, lm.config, tokens, mask), ref, 1e-5)


def test_input_x_gradient_matches_torch(setup):
  hf, lm, tokens, mask, heads = setup
  h = layer_output(hf, tokens, mask)
  ref_prob, ref_grad = torch_prob_and_grad(hf, tokens, mask, heads, h)
  attr, prob = attribution.input_x_gradient(lm.params, lm.config, LAYER, heads, CONCEPT_OF_ROW, tokens, mask)
  assert np.abs(ref_prob - 0.5).max() > 0.05
  assert_close(prob, ref_prob, 1e-5)
  ref_attr = h.numpy() * ref_grad
  assert_close(attr, ref_attr)
  assert_close(attribution.token_scores(attr), np.abs(ref_attr).sum(-1))
  assert np.all(np.asarray(attr)[~mask] == 0)  # pads after the last real token do not reach it


def test_integrated_gradients_match_a_torch_loop_over_steps(setup):
  hf, lm, tokens, mask, heads = setup
  ig = attribution.IGConfig(steps=8, step_chunk=2)  # AxBench's 50 steps run the same code, only longer
  ids = attribution.baseline_token_ids(lm.config, ig)
  assert ids.shape == (min(lm.config.vocab_size, 1000),)
  base = hf.model.embed_tokens.weight.detach()[torch.tensor(ids, dtype=torch.long)].mean(0)
  h = layer_output(hf, tokens, mask)
  total = torch.zeros_like(h)
  for k in range(ig.steps):
    alpha = k / ig.steps
    total += torch.tensor(torch_prob_and_grad(hf, tokens, mask, heads, base + alpha * (h - base))[1])
  ref_attr = ((h - base) * total / ig.steps).numpy()
  attr, prob = attribution.integrated_gradients(lm.params, lm.config, LAYER, heads, CONCEPT_OF_ROW, tokens, mask, ig)
  assert_close(attribution.ig_baseline(lm.params, lm.config, ig), base.numpy(), 1e-6)
  assert_close(prob, torch_prob_and_grad(hf, tokens, mask, heads, h)[0], 1e-5)
  assert_close(attr, ref_attr)
  assert_close(attribution.token_scores(attr), np.abs(ref_attr).sum(-1))
  coarse = attribution.integrated_gradients(lm.params, lm.config, LAYER, heads, CONCEPT_OF_ROW, tokens, mask,
                                            attribution.IGConfig(steps=8, step_chunk=8))[0]
  assert_close(coarse, attr, 1e-5)  # the chunking changes nothing (but the order of float sums)


def torch_loss(heads, c, states, labels):
  """AxBench's training loss: CrossEntropyLoss applied to the head's softmax output."""
  return torch.nn.CrossEntropyLoss()(torch_head(heads, c)(states), labels)


def test_classifier_loss_and_gradient_match_torch():
  d, n = 16, 10
  rng = np.random.default_rng(1)
  heads = {k: np.asarray(v) * 3.0 for k, v in attribution.init_classifiers(jax.random.key(0), 1, d).items()}
  states, labels = rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 2, n)
  one = {k: jnp.asarray(v[0]) for k, v in heads.items()}
  loss, grad = jax.value_and_grad(attribution.classifier_loss)(one, states, labels, jnp.full(n, 1.0 / n))
  params = {k: torch.tensor(v[0], requires_grad=True) for k, v in heads.items()}
  z = torch.relu(torch.tensor(states) @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
  ref = torch.nn.CrossEntropyLoss()(torch.softmax(z, -1), torch.tensor(labels))
  ref.backward()
  np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-6)
  assert float(loss) > np.log1p(np.exp(-1.0)) - 1e-6  # the double softmax's floor
  for k in heads:
    assert_close(grad[k], params[k].grad.numpy(), 1e-5)


def test_training_matches_axbenchs_loop():
  c, n, d = 2, 40, 16
  training = attribution.ClassifierTraining(batch_size=6, grad_accum=2, n_epochs=3, lr=1e-2, dropout=0.0, seed=5)
  rng = np.random.default_rng(2)
  states, labels = rng.normal(size=(c, n, d)).astype(np.float32), rng.integers(0, 2, (c, n))
  init = {k: np.asarray(v) for k, v in attribution.init_classifiers(jax.random.key(1), c, d).items()}
  got, losses = attribution.train_classifiers(states, labels, training, init=init)
  orders = attribution.epoch_orders(range(c), n, training)
  batches = -(-n // training.batch_size)
  assert losses.shape == (c, training.n_epochs * -(-batches // training.grad_accum))
  for concept in range(c):
    params = {k: torch.tensor(v[concept], requires_grad=True) for k, v in init.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=training.lr, weight_decay=training.weight_decay)
    total = training.n_epochs * max(1, batches // training.grad_accum)
    schedule = transformers.get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0,
                                          num_training_steps=total)
    step_losses, running = [], 0.0
    for order in orders[concept]:
      for step in range(batches):
        rows = order[step * training.batch_size:(step + 1) * training.batch_size]
        x, y = torch.tensor(states[concept, rows]), torch.tensor(labels[concept, rows])
        z = torch.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
        loss = torch.nn.CrossEntropyLoss()(torch.softmax(z, -1), y) / training.grad_accum
        loss.backward()
        running += loss.item()
        if (step + 1) % training.grad_accum == 0 or step + 1 == batches:
          optimizer.step()
          schedule.step()
          optimizer.zero_grad()
          step_losses.append(running)
          running = 0.0
    np.testing.assert_allclose(losses[concept], step_losses, rtol=1e-5)
    for k in init:
      assert_close(got[k][concept], params[k].detach().numpy(), 1e-5)


def test_default_training_separates_separable_concepts():
  c, n, d = 2, 144, 64  # AxBench's 72 + 72 examples per concept: 96 optimizer steps
  rng = np.random.default_rng(3)
  labels = np.tile(np.arange(n) % 2, (c, 1))
  states = rng.normal(size=(c, n, d)).astype(np.float32)
  states[:, :, :8] += 2.0 * (2 * labels[..., None] - 1)
  heads, losses = attribution.train_classifiers(states, labels)
  assert np.isfinite(losses).all() and losses[:, -4:].mean() < losses[:, :4].mean()
  for concept in range(c):
    one = {k: v[concept] for k, v in heads.items()}
    predicted = np.asarray(attribution.classifier_probs(one, states[concept]))[:, 1] > 0.5
    assert (predicted == labels[concept]).mean() >= 0.9


def test_bad_input_raises_one_clear_error(setup):
  _, lm, tokens, mask, heads = setup
  with pytest.raises(AxjaxError, match="out of range"):
    attribution.input_x_gradient(lm.params, lm.config, lm.config.num_layers, heads, CONCEPT_OF_ROW, tokens, mask)
  with pytest.raises(AxjaxError, match="concept_index"):
    attribution.input_x_gradient(lm.params, lm.config, LAYER, heads, np.array([0, 2, 1]), tokens, mask)
  with pytest.raises(AxjaxError, match="stacked"):
    attribution.input_x_gradient(lm.params, lm.config, LAYER, {k: v[0] for k, v in heads.items()}, CONCEPT_OF_ROW,
                                 tokens, mask)
  with pytest.raises(AxjaxError, match="multiple of step_chunk"):
    attribution.integrated_gradients(lm.params, lm.config, LAYER, heads, CONCEPT_OF_ROW, tokens, mask,
                                     attribution.IGConfig(steps=50, step_chunk=7))
  with pytest.raises(AxjaxError, match="0 \\(negative\\) or 1"):
    attribution.train_classifiers(np.zeros((1, 4, 8)), np.full((1, 4), 2))
  with pytest.raises(AxjaxError, match="\\[C, N, d\\]"):
    attribution.train_classifiers(np.zeros((4, 8)), np.zeros(4))


def test_interrupted_scoring_resumes_from_its_scratch_file(setup, tmp_path, monkeypatch):
  """A run stopped after two batches leaves its scores in the scratch file; the rerun scores only the other
  batches and ends with the same [E, C] scores as an uninterrupted run."""
  _, lm, _, _, heads = setup
  rng = np.random.default_rng(5)
  lengths = rng.integers(4, 12, size=10)
  tokens, mask = right_padded_batch(rng, lm.config.vocab_size, lengths, int(lengths.max()), PAD)
  ex = types.SimpleNamespace(concept_ids=np.array([7, 9] * 5), tokens=tokens, attention_mask=mask,
                             score_mask=mask)
  dictionary = Dictionary(weights=None, biases=None, concept_ids=(7, 9), concept_names=("a", "b"),
                          method="InputXGradients", model_name="tiny", layer=LAYER, width=lm.config.hidden_size,
                          extras=heads)
  monkeypatch.setattr(attribution, "_ROWS", 2)
  monkeypatch.setattr(attribution, "_SAVE_EVERY", 1)
  whole, pooled = attribution.detection_scores(dictionary, lm, ex, LAYER)
  assert not pooled and whole.shape == (10, 2) and (whole[np.arange(10), [0, 1] * 5] > 0).all()

  class Stop(Exception):
    pass

  def stop_after_two_batches(label, done, total):
    if done >= 4:
      raise Stop
  scratch = str(tmp_path / "InputXGradients.npz")
  with pytest.raises(Stop):
    attribution.detection_scores(dictionary, lm, ex, LAYER, scratch=scratch, progress=stop_after_two_batches)
  assert np.load(scratch)["done"].sum() == 4
  batches = []
  scorer = attribution.input_x_gradient
  monkeypatch.setattr(attribution, "input_x_gradient", lambda *a: batches.append(1) or scorer(*a))
  resumed, _ = attribution.detection_scores(dictionary, lm, ex, LAYER, scratch=scratch)
  assert len(batches) == 3  # 10 rows in batches of 2, two of them already scored
  np.testing.assert_allclose(resumed, whole, rtol=1e-6)
