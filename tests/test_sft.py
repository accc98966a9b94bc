"""AxBench's SFT (methods/sft.py) on a tiny random Gemma 3: the fine-tuned model equals a PyTorch run of
AxBench's sft.py loop on the HF twin (loss / accumulation before backward, clip_grad_norm_, AdamW, linear
schedule with its undercount); the base params never change, so concepts train independently of their order;
one compiled step serves every concept; the memory check refuses a budget too small, in one sentence."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.data import batching
from axjax.data.examples import LMExamples
from axjax.methods.registry import METHODS
from axjax.methods.sft import (check_sft_memory, output_nll, parameter_count, sft_memory_bytes,
                               sft_step, train_sft)
from axjax.model.transformer import unembed

T, PER_CONCEPT, CONCEPTS, SEED = 24, 5, 3, 5
# 5 positives in batches of 2: 3 batches per epoch, optimizer steps of 2 and then 1 batches (each batch's loss
# still divided by 2); AxBench's schedule counts 1 step per epoch, so over 2 epochs the rate is lr, lr / 2, 0, 0.
# The tiny model's gradient norms are 7 to 15: clipping at 1 acts on every step.
HP = {**METHODS["SFT"].small, "batch_size": 2, "gradient_accumulation_steps": 2, "n_epochs": 2, "lr": 1e-3,
      "weight_decay": 0.01}


def tiny_examples():
  """3 concepts x 5 right-padded positives over shared rows: prompts of 11-14 tokens, outputs of 3-6 (batches
  differ in token count, so a batch's mean over tokens is not a mean over rows)."""
  rng = np.random.default_rng(0)
  rows = CONCEPTS * PER_CONCEPT
  prompt_lengths = rng.integers(11, 15, rows).astype(np.int32)
  lengths = prompt_lengths + rng.integers(3, 7, rows)
  t = np.arange(T)[None]
  mask = t < lengths[:, None]
  tokens = np.where(mask, rng.integers(1, 128, (rows, T)), 0).astype(np.int32)
  return LMExamples(
      concept_ids=np.array([7, 3, 11], np.int32), index=np.arange(rows, dtype=np.int32).reshape(CONCEPTS, -1),
      labels=np.ones((CONCEPTS, PER_CONCEPT), np.int32), row_valid=np.ones((CONCEPTS, PER_CONCEPT), bool),
      texts=("",) * rows, tokens=tokens, attention_mask=mask, loss_mask=mask & (t >= prompt_lengths[:, None]),
      intervention_mask=mask, prompt_lengths=prompt_lengths, prefix_length=0)


def assert_finetuned_close(got, want, lr, message):
  """Equal to float noise, except where an entry's gradient lies near AdamW's eps (1e-8; the update is
  m / (sqrt(v) + eps)): there the noise grows to a fraction of a step, in a few entries of the whole model
  (at most 0.1%). Training moves entries by about lr each step, so a wrong batch, clip or update fails."""
  got, want = np.asarray(got), np.asarray(want)
  off = np.abs(got - want) > 1e-6 + 1e-4 * np.abs(want)
  assert off.mean() <= 1e-3, f"{message}: {off.sum()} of {off.size} entries differ"
  np.testing.assert_allclose(got, want, rtol=0, atol=0.25 * lr, err_msg=message)


@pytest.fixture(scope="module")
def tiny(tiny_gemma3):
  model = axjax.load(tiny_gemma3[1])
  return model, tiny_examples(), jax.tree.map(np.array, model.params)


@pytest.fixture(scope="module")
def trained(tiny):
  """train_sft runs on the shared model, each computed on first use: key (concept position, seed)."""
  model, examples, _ = tiny
  runs = {}

  def run(concept, seed=SEED):
    if (concept, seed) not in runs:
      runs[concept, seed] = train_sft(model, examples, concept, HP, seed)
    return runs[concept, seed]

  return run


def axbench_sft(torch, hf_model, examples, concept, hp, seed):
  """AxBench's SFT._train on a copy of the HF model over batching.minibatches' orders: per step the summed
  (loss / accumulation) of its batches and the gradient norm before clipping; the model after training."""
  model = copy.deepcopy(hf_model).train()
  accum, epochs = hp["gradient_accumulation_steps"], hp["n_epochs"]
  valid = examples.row_valid[[concept]]
  per_epoch = batching.steps_per_epoch(valid, hp["batch_size"])
  total = epochs * max(1, per_epoch // accum)
  optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: max(0.0, (total - k) / max(1, total)))
  losses, norms, group = [], [], 0.0
  for batch in batching.minibatches(valid, hp["batch_size"], epochs, seed, examples.concept_ids[[concept]]):
    step = batch.step % per_epoch
    rows = examples.index[concept][batch.positions[0][batch.weight[0]]]
    tokens = torch.tensor(examples.tokens[rows], dtype=torch.long)
    labels = tokens.masked_fill(~torch.tensor(examples.loss_mask[rows]), -100)
    mask = torch.tensor(examples.attention_mask[rows], dtype=torch.long)
    loss = model(input_ids=tokens, attention_mask=mask, labels=labels).loss / accum
    loss.backward()
    group += loss.item()
    if (step + 1) % accum == 0 or step + 1 == per_epoch:
      norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), hp["max_grad_norm"])))
      optimizer.step()
      scheduler.step()
      optimizer.zero_grad()
      losses.append(group)
      group = 0.0
  return np.array(losses), np.array(norms), model


def test_sft_equals_axbench_loop_in_torch(torch, tiny_gemma3, tiny, trained, tmp_path):
  model, examples, base = tiny
  params, record = trained(1)
  np.testing.assert_allclose(record["lr"], [HP["lr"], HP["lr"] / 2, 0.0, 0.0], rtol=1e-6)
  losses, norms, twin = axbench_sft(torch, tiny_gemma3[0], examples, 1, HP, SEED)
  assert (norms > 2 * HP["max_grad_norm"]).all()  # clipping acts on every step
  np.testing.assert_allclose(record["loss"], losses, rtol=2e-5)
  np.testing.assert_allclose(record["grad_norm"], norms, rtol=1e-4)
  twin.save_pretrained(tmp_path)
  want = axjax.load(str(tmp_path)).params
  assert jax.tree.structure(params) == jax.tree.structure(want)
  for (path, got), expected, start in zip(jax.tree.leaves_with_path(params), jax.tree.leaves(want),
                                          jax.tree.leaves(base)):
    name = jax.tree_util.keystr(path)
    assert got.dtype == start.dtype and got.shape == start.shape, name
    assert_finetuned_close(got, expected, HP["lr"], name)
    assert np.abs(np.asarray(got) - start).max() > 0.5 * HP["lr"], f"{name} did not train"


def test_base_params_stay_and_concepts_train_independently(tiny_gemma3, tiny, trained):
  """Concept 0 then concept 1 on one model equal concept 1 alone on a freshly loaded one, and leave the
  model's params as loaded (AxBench reloads the model between concepts); one compiled step serves both."""
  model, examples, base = tiny
  trained(0)
  compiled = sft_step._cache_size()
  after_first, _ = trained(1)
  for leaf, start in zip(jax.tree.leaves(model.params), jax.tree.leaves(base)):
    np.testing.assert_array_equal(np.asarray(leaf), start)
  alone, _ = train_sft(axjax.load(tiny_gemma3[1]), examples, 1, HP, SEED)
  for got, want in zip(jax.tree.leaves(after_first), jax.tree.leaves(alone)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert sft_step._cache_size() == compiled


def test_same_seed_same_numbers(tiny, trained):
  model, examples, _ = tiny
  params, record = trained(2)
  again, record_again = train_sft(model, examples, 2, HP, SEED)
  for got, want in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for name, values in record.items():
    np.testing.assert_array_equal(record_again[name], values)
  _, other = trained(2, SEED + 1)  # another seed, other batch orders
  assert not np.allclose(other["loss"], record["loss"])


def test_bfloat16_trains_in_bfloat16_and_returns_the_model_dtype(tiny, trained):
  """dtype=bfloat16 (AxBench's use_bf16): params, gradients and moments in bf16; the result comes back in the
  model's float32, each value a bf16 number, the losses those of float32 training to bf16 precision."""
  model, examples, base = tiny
  params, record = train_sft(model, examples, 1, {**HP, "dtype": "bfloat16"}, SEED)
  for leaf, start in zip(jax.tree.leaves(params), jax.tree.leaves(base)):
    leaf = np.asarray(leaf)
    assert leaf.dtype == start.dtype == np.float32
    np.testing.assert_array_equal(leaf, leaf.astype(jnp.bfloat16).astype(np.float32))
  np.testing.assert_allclose(record["loss"], trained(1)[1]["loss"], rtol=2e-2)


@pytest.mark.parametrize("cap", [None, 30.0])
def test_chunked_output_nll_equals_full_logits(tiny, cap):
  """Value and gradients (rows, final norm, tied unembedding) over chunks of 48 of the 128 tokens (the last
  one padded) equal the full log-softmax, with and without Gemma 2's final soft-cap."""
  model, _, _ = tiny
  config = model.config.replace(final_logit_softcap=cap)
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.normal(size=(9, config.hidden_size)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, config.vocab_size, 9))
  weights = jnp.asarray(rng.normal(size=9), jnp.float32)
  parts = {"embed": model.params["embed"], "final_norm": model.params["final_norm"]}
  full = lambda p, h: -jnp.take_along_axis(jax.nn.log_softmax(unembed(p, config, h)), targets[:, None], 1)[:, 0]
  chunked = lambda p, h: output_nll(p, config, h, targets, chunk=48)
  np.testing.assert_allclose(chunked(parts, h), full(parts, h), rtol=1e-5)
  grads = lambda f: jax.jit(jax.grad(lambda p, h: jnp.sum(f(p, h) * weights), argnums=(0, 1)))(parts, h)
  for got, want in zip(jax.tree.leaves(grads(chunked)), jax.tree.leaves(grads(full))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_memory_check_refuses_a_small_budget(tiny):
  config = tiny[0].config
  assert parameter_count(config) == sum(x.size for x in jax.tree.leaves(tiny[0].params))
  assert parameter_count(axjax.PRESETS["gemma-2-2b"]) == 2_614_341_888
  needed = sft_memory_bytes(config, HP)
  half = sft_memory_bytes(config, {**HP, "dtype": "bfloat16"})
  assert 5 * 4 * parameter_count(config) < needed and half < needed
  check_sft_memory(config, HP, needed)
  with pytest.raises(axjax.AxjaxError, match=r"SFT needs about \d+\.\d+ GB .* but only \d+\.\d+ GB are available: "
                                             r"pass --hparams SFT\.dtype=bfloat16"):
    check_sft_memory(config, HP, needed - 1)
  with pytest.raises(axjax.AxjaxError, match="use a smaller model"):
    check_sft_memory(config, {**HP, "dtype": "bfloat16"}, half // 2)
  with pytest.raises(axjax.AxjaxError, match="SFT.dtype must be one of float32, bfloat16"):
    sft_memory_bytes(config, {**HP, "dtype": "float16"})
