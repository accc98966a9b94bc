"""LoReFT and LoRA trained jointly over concepts (adapter_training) and steered per row (adapter_generation) on
a tiny random Gemma 3: joint training equals each concept alone; AxBench's loop (accumulation, clipping, AdamW,
its linear schedule's undercount) equals a PyTorch run written from AxBench's reft.py / lora.py on the HF model
(LoReFT by forward hooks, LoRA by peft); rows of many concepts generate as each concept's rows alone."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.data import batching
from axjax.data.examples import LMExamples
from axjax.generation.sampling import SamplingConfig
from axjax.methods.activations import layer_activations
from axjax.methods.adapter_training import (adapter_hyperparameters, adapters_from, default_layers,
                                            prepare_training, train_adapters)
from axjax.model.adapters import first_last_mask, loreft
from axjax.steering_eval.adapter_generation import steer_generate
from conftest import padded_batch
from test_lora_peft import peft_logits
from test_loreft_torch import SITES, torch_logits

T, PER_CONCEPT, CONCEPTS, SEED = 24, 5, 3, 5
LORA_LAYERS = (5, 6)
# 5 examples in batches of 2: 3 batches per epoch, steps of 2 and 1 batches; AxBench's schedule counts 1 step per
# epoch, so over 3 epochs the rate decays over the first 3 of the 6 steps and stays 0 for the rest.
SMALL = {"batch_size": 2, "gradient_accumulation_steps": 2, "n_epochs": 3, "lr": 0.02, "weight_decay": 0.01}
# The tiny model's gradients have norms of about 0.2: LoReFT's clipping acts at 0.05 (AxBench's 1.0 would not).
OVERRIDES = {"LoReFT": {**SMALL, "layers": "+".join(map(str, SITES)), "positions": "f3+l3",
                        "max_grad_norm": 0.05},
             "LoRA": {**SMALL, "layers": "+".join(map(str, LORA_LAYERS))}}


@pytest.fixture(scope="module")
def tiny(tiny_gemma3):
  """The model and synthetic positives: 3 concepts x 5 right-padded rows, prompts of 11-14 tokens. Each concept's
  outputs have 4, 4, 4, 4 and 6 tokens in some order: batches differ in token count (so a batch's mean over
  tokens is not the mean over rows), yet with these orders every concept alone packs to the same shapes, and
  one compiled step serves them all."""
  rng = np.random.default_rng(0)
  rows = CONCEPTS * PER_CONCEPT
  prompt_lengths = rng.integers(11, 15, rows).astype(np.int32)
  lengths = prompt_lengths + np.concatenate([rng.permutation([4, 4, 4, 4, 6]) for _ in range(CONCEPTS)])
  t = np.arange(T)[None]
  mask = t < lengths[:, None]
  tokens = np.where(mask, rng.integers(1, 128, (rows, T)), 0).astype(np.int32)
  examples = LMExamples(
      concept_ids=np.array([7, 3, 11], np.int32), index=np.arange(rows, dtype=np.int32).reshape(CONCEPTS, -1),
      labels=np.ones((CONCEPTS, PER_CONCEPT), np.int32), row_valid=np.ones((CONCEPTS, PER_CONCEPT), bool),
      texts=("",) * rows, tokens=tokens, attention_mask=mask, loss_mask=mask & (t >= prompt_lengths[:, None]),
      intervention_mask=mask, prompt_lengths=prompt_lengths, prefix_length=0)
  return axjax.load(tiny_gemma3[1]), examples


def activations(model, examples, kind, overrides):
  adapters = adapters_from(kind, model.config, adapter_hyperparameters(kind, model.config, overrides))
  return layer_activations(model.params, model.config, examples.tokens, examples.attention_mask, adapters.after)


def assert_trained_close(got, want, lr, message, rtol=1e-5):
  """Equal to float noise, except that AdamW blows the noise up where an entry's first gradient lies near its eps
  (1e-8; the update is g / (|g| + eps)): a few entries may then differ by a small fraction of one step (lr).
  A wrong batch, key or update moves most entries by about lr."""
  got, want = np.asarray(got), np.asarray(want)
  off = np.abs(got - want) > 1e-6 + rtol * np.abs(want)
  assert off.mean() <= 0.05, f"{message}: {off.sum()} of {off.size} entries differ"
  np.testing.assert_allclose(got, want, rtol=0, atol=0.05 * lr, err_msg=message)


@pytest.fixture(scope="module")
def trained(tiny):
  """Training runs (default settings of OVERRIDES) shared by the tests, each computed on first use."""
  model, examples = tiny
  runs = {}

  def run(kind, subset=None):
    key = (kind, subset)
    if key not in runs:
      acts = activations(model, examples, kind, OVERRIDES[kind])
      runs[key] = train_adapters(kind, model, examples, acts, overrides=OVERRIDES[kind], seed=SEED, subset=subset)
    return runs[key]

  return run


@pytest.mark.parametrize("kind", ["LoReFT", "LoRA"])
def test_joint_training_equals_each_concept_alone(tiny, trained, kind):
  """Three concepts in one step (LoRA with dropout on: keys from seed, concept id and step) equal separate runs."""
  model, examples = tiny
  joint = trained(kind)
  assert joint.hyperparameters["accumulate"] == {"LoReFT": "sum", "LoRA": "mean"}[kind]  # AxBench's loops
  assert joint.record["loss"].shape == (6, CONCEPTS) and np.isfinite(joint.record["loss"]).all()
  start = prepare_training(kind, model.config, examples, activations(model, examples, kind, OVERRIDES[kind]),
                           overrides=OVERRIDES[kind], seed=SEED).init
  for c in range(CONCEPTS):
    run = trained(kind, (c,))
    assert run.concept_ids.tolist() == [examples.concept_ids[c]]
    np.testing.assert_allclose(run.record["loss"][:, 0], joint.record["loss"][:, c], rtol=1e-5)
    for name, value in joint.params.items():
      assert_trained_close(value[c], run.params[name][0], SMALL["lr"], f"{name} of concept {c}")
  moved = max(np.abs(joint.params[k] - np.asarray(start[k])).max() for k in joint.params)
  assert moved > 1e-3


def test_killed_training_resumes_from_its_last_epoch_to_identical_numbers(tiny, trained, tmp_path):
  """The state is saved after every epoch (2 steps): a run killed in its second epoch restarts there and ends
  exactly as the uninterrupted run (concept 1 alone, the same compiled step)."""
  model, examples = tiny
  acts = activations(model, examples, "LoReFT", OVERRIDES["LoReFT"])
  run = lambda progress: train_adapters("LoReFT", model, examples, acts, overrides=OVERRIDES["LoReFT"], seed=SEED,
                                        subset=(1,), checkpoint_dir=str(tmp_path), progress=progress)

  def kill_in_epoch_two(done, total):
    if done == 3:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    run(kill_in_epoch_two)
  steps = []
  resumed = run(lambda done, total: steps.append((done, total)))
  assert steps == [(3, 6), (4, 6), (5, 6), (6, 6)]
  whole = trained("LoReFT", (1,))
  for name, value in whole.params.items():
    np.testing.assert_array_equal(resumed.params[name], value)
  np.testing.assert_array_equal(resumed.record["loss"], whole.record["loss"])


def hf_loss(torch, logits, tokens, loss_mask):
  """transformers' causal-LM loss: the mean next-token NLL over the batch's output tokens."""
  logp = logits[:, :-1].log_softmax(-1)
  nll = -logp.gather(-1, torch.tensor(tokens[:, 1:], dtype=torch.long)[..., None])[..., 0]
  where = torch.tensor(loss_mask[:, 1:], dtype=torch.float32)
  return (nll * where).sum() / where.sum()


def axbench_loop(torch, examples, concept, hp, seed, leaves, loss_of_rows, summed):
  """AxBench's reft.py / lora.py training loop over the concept's batches (batching.minibatches' orders):
  returns each optimizer step's loss (the sum of its batches' losses, or that over the accumulation count) and
  the first step's gradients before clipping."""
  transformers = pytest.importorskip("transformers")
  accum, epochs = hp["gradient_accumulation_steps"], hp["n_epochs"]
  valid = examples.row_valid[[concept]]
  per_epoch = batching.steps_per_epoch(valid, hp["batch_size"])
  optimizer = torch.optim.AdamW(leaves, lr=hp["lr"], weight_decay=hp["weight_decay"], betas=(0.9, 0.999), eps=1e-8)
  scheduler = transformers.get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0,
                                         num_training_steps=epochs * max(1, per_epoch // accum))
  batches = list(batching.minibatches(valid, hp["batch_size"], epochs, seed, examples.concept_ids[[concept]]))
  losses, first_grads, group = [], None, 0.0
  for batch in batches:
    step = batch.step % per_epoch
    rows = examples.index[concept][batch.positions[0][batch.weight[0]]]
    loss = loss_of_rows(rows)
    (loss if summed else loss / accum).backward()  # reft.py divides after backward, lora.py before
    group += loss.item() if summed else loss.item() / accum
    if (step + 1) % accum == 0 or step + 1 == per_epoch:
      if first_grads is None:
        first_grads = [p.grad.detach().numpy().copy() for p in leaves]
      if hp["max_grad_norm"]:
        torch.nn.utils.clip_grad_norm_(leaves, hp["max_grad_norm"])
      optimizer.step()
      scheduler.step()
      optimizer.zero_grad()
      losses.append(group)
      group = 0.0
  return np.array(losses), first_grads


def first_step_gradients(setup, model):
  """The JAX objective's loss and gradients on the first step's batch, gathered as joint_step gathers it."""
  step = setup.batches[0]
  batch = {k: jnp.asarray(v)[step.rows] for k, v in setup.arrays.items()}
  batch.update({k: jnp.asarray(v) for k, v in step.extra.items()}, weight=jnp.asarray(step.weight, jnp.float32))
  total = lambda p: jnp.sum(setup.objectives[0].joint(p, batch, 0.0, model.params)[0])
  return jax.jit(jax.value_and_grad(total))(setup.init)


def check_against_torch(setup, trained, model, losses, grads, final, names):
  """Step losses, first gradients (torch leaves in `names` order: (key, index) into the stack) and the
  parameters after training agree."""
  np.testing.assert_allclose(trained.record["loss"][:, 0], losses, rtol=2e-5)
  loss, jax_grads = first_step_gradients(setup, model)
  np.testing.assert_allclose(float(loss), losses[0], rtol=2e-5)
  for (key, index), want, got in zip(names, grads, final):
    mine = np.asarray(jax_grads[key][(0, *index)])
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(mine, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=f"grad {key}{index}")
    assert_trained_close(trained.params[key][(0, *index)], got, SMALL["lr"], f"{key}{index}", rtol=1e-4)
    assert np.abs(trained.params[key][(0, *index)] - np.asarray(setup.init[key][(0, *index)])).max() > 1e-3


def test_loreft_training_equals_torch(torch, tiny_gemma3, tiny, trained):
  """3 epochs of 2 steps (2 batches, then 1): gradients summed over the batches, clipped to a global norm, AdamW
  with weight decay, and a schedule over 3 steps (the rate is 0 for the last three), all as reft.py does."""
  model, examples = tiny
  acts = activations(model, examples, "LoReFT", OVERRIDES["LoReFT"])
  setup = prepare_training("LoReFT", model.config, examples, acts, overrides=OVERRIDES["LoReFT"], seed=SEED,
                           subset=[1])
  run = trained("LoReFT", (1,))
  keys = ("rotation", "weight", "bias")
  params = [{k: torch.tensor(np.asarray(setup.init[k][0, s]), requires_grad=True) for k in keys}
            for s in range(len(SITES))]
  prompt = np.arange(T)[None] < examples.prompt_lengths[:, None]
  first_last = prompt & ((np.arange(T)[None] < 3) | (np.arange(T)[None] >= examples.prompt_lengths[:, None] - 3))

  def loss_of_rows(rows):
    logits = torch_logits(tiny_gemma3[0], examples.tokens[rows], examples.attention_mask[rows], first_last[rows],
                          params)
    return hf_loss(torch, logits, examples.tokens[rows], examples.loss_mask[rows])

  leaves = [p[k] for p in params for k in keys]
  names = [(k, (s,)) for s in range(len(SITES)) for k in keys]
  losses, grads = axbench_loop(torch, examples, 1, setup.hyperparameters, SEED, leaves, loss_of_rows, True)
  assert len(losses) == 6 and setup.optim.total_steps == 3
  check_against_torch(setup, run, model, losses, grads, [p.detach().numpy() for p in leaves], names)


def test_lora_training_equals_peft(torch, tiny_gemma3, tiny):
  """peft's rsLoRA (dropout off) from a non-zero start: each batch's loss divided by the accumulation count
  before backward, no clipping, AdamW with weight decay, as lora.py does."""
  peft = pytest.importorskip("peft")
  model, examples = tiny
  overrides = {**OVERRIDES["LoRA"], "dropout": 0.0}
  acts = activations(model, examples, "LoRA", overrides)
  keys = jax.random.split(jax.random.key(9))
  d_in = model.config.num_heads * model.config.head_dim
  init = {"a": 0.2 * jax.random.normal(keys[0], (1, 2, d_in, 4)),
          "b": 0.2 * jax.random.normal(keys[1], (1, 2, 4, model.config.hidden_size))}
  setup = prepare_training("LoRA", model.config, examples, acts, overrides=overrides, seed=SEED, subset=[2],
                           init=init)
  run = train_adapters("LoRA", model, examples, acts, overrides=overrides, seed=SEED, subset=[2], init=init)
  config = peft.LoraConfig(r=4, lora_alpha=32, use_rslora=True, target_modules=["o_proj"],
                           layers_to_transform=list(LORA_LAYERS), lora_dropout=0.0)
  wrapped = peft.get_peft_model(copy.deepcopy(tiny_gemma3[0]), config).eval()
  leaves = []
  for i, layer in enumerate(LORA_LAYERS):
    o_proj = wrapped.base_model.model.model.layers[layer].self_attn.o_proj
    a, b = o_proj.lora_A["default"].weight, o_proj.lora_B["default"].weight
    with torch.no_grad():
      a.copy_(torch.tensor(np.asarray(init["a"][0, i]).T))
      b.copy_(torch.tensor(np.asarray(init["b"][0, i]).T))
    leaves += [a, b]

  def loss_of_rows(rows):
    logits = peft_logits(wrapped, examples.tokens[rows], examples.attention_mask[rows])
    return hf_loss(torch, logits, examples.tokens[rows], examples.loss_mask[rows])

  losses, grads = axbench_loop(torch, examples, 2, setup.hyperparameters, SEED, leaves, loss_of_rows, False)
  names = [(k, (i,)) for i in range(2) for k in ("a", "b")]
  transpose = lambda arrays: [x.T for x in arrays]  # peft's [r, d_in] / [d, r] to axjax's [d_in, r] / [r, d]
  check_against_torch(setup, run, model, losses, transpose(grads),
                      transpose([p.detach().numpy() for p in leaves]), names)


def strong_stack(model, adapters, seed):
  """Random adapters for 3 concepts, large enough to change greedy and sampled tokens, then an identity adapter
  (LoReFT: W = R, b = 0; LoRA: B = 0) whose rows generate as the unedited model."""
  keys = jax.random.split(jax.random.key(seed), 4)
  stack = adapters.init(model.config, jax.random.split(keys[0], CONCEPTS + 1))
  if adapters.kind == "LoReFT":
    rotation = jax.random.normal(keys[1], stack["rotation"].shape).at[-1].set(stack["rotation"][-1])
    return {"rotation": rotation, "weight": (stack["weight"] * 30.0).at[-1].set(stack["rotation"][-1]),
            "bias": stack["bias"].at[-1].set(0.0)}
  return {k: 0.5 * jax.random.normal(key, v.shape).at[-1].set(0.0) for (k, v), key in zip(stack.items(), keys[2:])}


@pytest.mark.parametrize("kind,temperature", [("LoReFT", 0.0), ("LoRA", 1.0)])
def test_rows_of_many_concepts_generate_as_each_concept_alone(tiny, kind, temperature):
  model, _ = tiny
  adapters = adapters_from(kind, model.config, adapter_hyperparameters(kind, model.config, OVERRIDES[kind]))
  stack = strong_stack(model, adapters, 4)
  ids, mask = padded_batch(np.random.default_rng(5), 128, lengths=[12, 9, 7, 12, 10, 8], width=12)
  index = np.array([0, 2, 1, 2, 0, 1])
  keys = jax.random.split(jax.random.key(6), len(index))
  sampling = SamplingConfig(max_new_tokens=6, temperature=temperature)
  generate = lambda s, i, rows: np.asarray(steer_generate(model.params, model.config, adapters, s, i, ids[rows],
                                                          mask[rows], keys[rows], sampling).tokens)
  together = generate(stack, index, slice(None))
  for c in range(CONCEPTS):
    rows = np.resize(np.flatnonzero(index == c), len(index))  # the concept's rows, repeated to the same batch size
    alone = generate(jax.tree.map(lambda x: x[c:c + 1], stack), np.zeros(len(rows), int), rows)
    np.testing.assert_array_equal(alone, together[rows], err_msg=f"concept {c}")
  if kind == "LoReFT":  # greedy tokens as one forward pass predicts them with each row's concept's sites acting
    # at the prompt's first and last 3 tokens only (pyreft's steering), not at the generated ones
    sites = tuple(map(loreft, SITES))
    site_params = tuple({k: v[index, s] for k, v in stack.items()} for s in range(len(SITES)))
    new = together.shape[1]
    where = np.concatenate([np.asarray(first_last_mask(jnp.asarray(mask), 3, 3)), np.zeros_like(together, bool)], 1)
    logits = axjax.forward(model.params, model.config, np.concatenate([ids, together], 1),
                           np.concatenate([mask, np.ones_like(together, bool)], 1), intervention=sites,
                           intervention_params=site_params, intervention_mask=where).logits
    np.testing.assert_array_equal(together, np.argmax(np.asarray(logits)[:, -new - 1:-1], axis=-1))
  plain = generate(stack, np.full(len(index), CONCEPTS), slice(None))
  assert (together != plain).any(axis=1).sum() >= 4  # the adapters change most rows


def test_defaults_are_axbench_sweeps(tiny):
  config = tiny[0].config
  small = {k: adapter_hyperparameters(k, config) for k in ("LoReFT", "LoRA")}
  large = {k: adapter_hyperparameters(k, config.replace(hidden_size=3584)) for k in ("LoReFT", "LoRA")}
  for hp in (*small.values(), *large.values()):
    assert (hp["n_epochs"], hp["weight_decay"], hp["low_rank_dimension"], hp["layers"]) == (24, 0.0, 4, "auto")
  assert [small["LoReFT"][k] for k in ("batch_size", "gradient_accumulation_steps", "lr", "positions", "accumulate",
                                       "max_grad_norm")] == [18, 2, 9e-4, "f5+l5", "sum", 1.0]
  assert [large["LoReFT"][k] for k in ("batch_size", "gradient_accumulation_steps", "lr")] == [9, 4, 4e-4]
  assert [small["LoRA"][k] for k in ("batch_size", "gradient_accumulation_steps", "lr", "lora_alpha", "dropout",
                                     "accumulate", "max_grad_norm")] == [18, 2, 9e-4, 32.0, 0.05, "mean", 0.0]
  assert large["LoRA"]["lr"] == 5e-3


def test_default_layers_follow_axbench_and_scale_with_depth():
  assert default_layers(26) == (5, 10, 15, 20) and default_layers(42) == (12, 20, 31, 39)
  assert default_layers(18) == (3, 7, 10, 14)  # the embedded Gemma 3 270M
  assert default_layers(4) == (1, 2, 3)


def test_bad_input_is_refused_in_one_sentence(tiny):
  model, examples = tiny
  config = model.config
  hp = lambda kind, **o: adapter_hyperparameters(kind, config, {**OVERRIDES[kind], **o})
  cases = [(lambda: adapters_from("LoReFT", config, hp("LoReFT", layers="2+9")), "out of range"),
           (lambda: adapters_from("LoReFT", config, hp("LoReFT", layers="4+2")), "increasing order"),
           (lambda: adapters_from("LoRA", config, hp("LoRA", layers="0+3")), "layer 1 or above"),
           (lambda: adapters_from("LoRA", config, hp("LoRA", layers="1,3")), "joined by"),
           (lambda: adapters_from("LoReFT", config, hp("LoReFT", positions="f5")), "fN\\+lM"),
           (lambda: hp("LoRA", accumulate="median"), "must be one of sum, mean"),
           (lambda: hp("LoRA", positions="f5+l5"), "no hyperparameter"),
           (lambda: adapter_hyperparameters("DiReFT", config), "unknown adapter kind"),
           (lambda: prepare_training("LoRA", config, examples, np.zeros((2, T, 64), np.float32),
                                     overrides=OVERRIDES["LoRA"]), "do not match"),
           (lambda: prepare_training("LoRA", config, examples, np.zeros((15, T, 64), np.float32),
                                     overrides=OVERRIDES["LoRA"], subset=[3]), "subset")]
  adapters = adapters_from("LoRA", config, hp("LoRA"))
  stack = strong_stack(model, adapters, 0)
  ids, mask = padded_batch(np.random.default_rng(0), 128, lengths=[5, 3], width=8)
  run = lambda s, i: steer_generate(model.params, config, adapters, s, i, ids, mask, jax.random.key(0))
  cases += [(lambda: run({"a": stack["a"]}, [0, 1]), "do not fit"),
            (lambda: run(jax.tree.map(lambda x: x[:, :1], stack), [0, 1]), "do not fit"),
            (lambda: run(stack, [0, 4]), "must lie in 0..3"),
            (lambda: run(stack, [0]), "one integer per prompt row")]
  for call, message in cases:
    with pytest.raises(axjax.AxjaxError, match=message):
      call()
