"""Joint training over concepts is exact: C concepts in one compiled step equal C separate runs."""

import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.methods.activations import layer_activations
from axjax.data.batching import packed_loss_positions, packed_width, pooled_rows
from axjax.methods.joint_training import OptimConfig, StepBatch, compile_step, init_state, train_jointly
from axjax.methods.objectives import ProbeObjective, ReftR1Objective, SsvObjective, UpperModel

LAYER, U, T, P, C, B = 2, 12, 14, 6, 3, 2


@pytest.fixture(scope="module")
def setup(tiny_gemma3):
  """Right-padded examples: a prompt, then output tokens whose next-token loss counts."""
  lm = axjax.load(tiny_gemma3[1])
  rng = np.random.default_rng(0)
  lengths = rng.integers(9, T + 1, U)
  tokens = rng.integers(0, 128, (U, T)).astype(np.int32)
  mask = np.arange(T)[None] < lengths[:, None]
  tokens[~mask] = 0
  loss_mask = (np.arange(T)[None] >= P + 2) & mask  # 1 to 6 output tokens: concepts' counts differ per step
  examples = {
      "tokens": tokens, "mask": mask, "acts": layer_activations(lm.params, lm.config, tokens, mask, LAYER),
      "position_mask": (mask & (np.arange(T)[None] >= 1)).astype(np.float32),
      "label": (np.arange(U) % 2).astype(np.int32),
  }
  examples["pad_acts"] = examples["acts"][np.arange(U), np.minimum(lengths, T - 1)]
  return lm, {k: jnp.asarray(v) for k, v in examples.items()}, loss_mask


def schedule(concepts, loss_mask, epochs=2, seed=0):
  """Each concept's own shuffled order of its rows (concept c owns rows 4c..4c+3), loss positions packed."""
  steps = []
  for epoch in range(epochs):
    orders = [np.random.default_rng([seed, c, epoch]).permutation(4) + 4 * c for c in concepts]
    steps += [(np.stack([o[s:s + B] for o in orders]), np.ones((len(concepts), B))) for s in range(0, 4, B)]
  width = packed_width(loss_mask, steps)
  return [StepBatch(rows, weight, dict(zip(("loss_index", "loss_valid"),
                                           packed_loss_positions(loss_mask, rows, weight, width))))
          for rows, weight in steps]


def objective(method, upper):
  return {"reft_r1": ReftR1Objective(upper, topk=3, coeff_l1=0.05), "ssv": SsvObjective(upper),
          "probe": ProbeObjective()}[method]


@pytest.mark.parametrize("method", ["reft_r1", "ssv", "probe"])
def test_joint_equals_one_concept_at_a_time(setup, method):
  """Jointly, the output rows of all concepts are pooled (fewer than C x the packed width); alone, not."""
  lm, examples, loss_mask = setup
  batches = schedule(range(C), loss_mask)
  pooled = pooled_rows([b.extra["loss_valid"] for b in batches], C, 1)
  assert pooled < C * batches[0].extra["loss_valid"].shape[1]
  loss = objective(method, UpperModel(lm.config, LAYER, output_rows=pooled))
  cfg = OptimConfig(lr=0.01, total_steps=4, clip_norm=1.0 if method == "reft_r1" else None,
                    unit_norm_key=None if method == "ssv" else "w")
  init = {"w": jnp.full((C, lm.config.hidden_size), 0.01)}
  joint = train_jointly(cfg, loss, init, examples, batches, frozen=lm.params)[0]["w"]
  loss = objective(method, UpperModel(lm.config, LAYER))
  for c in range(C):
    alone = train_jointly(cfg, loss, {"w": init["w"][c:c + 1]}, examples, schedule([c], loss_mask),
                          frozen=lm.params)[0]["w"]
    np.testing.assert_allclose(np.asarray(joint[c]), np.asarray(alone[0]), rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(joint) - 0.01).max() > 1e-3  # training moved the parameters


def test_equal_objectives_share_one_compiled_step():
  """Objectives hash by value, so a second training run with the same settings does not recompile."""
  upper = UpperModel(axjax.PRESETS["gemma-3-270m"], LAYER)
  assert ReftR1Objective(upper, 8, 5e-3) == ReftR1Objective(upper, 8, 5e-3)
  assert hash(ReftR1Objective(upper, 8, 5e-3)) == hash(ReftR1Objective(upper, 8, 5e-3))
  assert ReftR1Objective(upper, 8, 5e-3) != ReftR1Objective(upper, 4, 5e-3)


def test_step_keeps_activations_when_they_fit_and_recomputes_them_when_not(setup):
  """Keeping the upper layers' activations needs more temporary memory than recomputing them, and smaller
  vocabulary chunks less again; the trainer takes the first objective whose compiled step fits the limit, and
  all compute the same training."""
  lm, examples, loss_mask = setup
  assert lm.config.vocab_size >= 4 * 16
  ladder = [ReftR1Objective(UpperModel(lm.config, LAYER, remat=r, vocab_chunk=chunk), topk=3, coeff_l1=0.05)
            for r, chunk in ((False, lm.config.vocab_size), (True, lm.config.vocab_size), (True, 16))]
  cfg = OptimConfig(lr=0.01, total_steps=4, clip_norm=1.0, unit_norm_key="w")
  init = {"w": jnp.full((C, lm.config.hidden_size), 0.01)}
  batches = schedule(range(C), loss_mask)
  temp = [compile_step(cfg, objective, init, init_state(cfg, init), examples, batches[0], lm.params)
          .memory_analysis().temp_size_in_bytes for objective in ladder]
  assert temp[0] > temp[1]  # (the logits saved by small chunks matter at a 262k vocabulary, not at this one's 128)
  roomy = train_jointly(cfg, ladder, init, examples, batches, frozen=lm.params, memory_limit=2**40)
  tight = train_jointly(cfg, ladder, init, examples, batches, frozen=lm.params, memory_limit=0)
  np.testing.assert_allclose(np.asarray(roomy[0]["w"]), np.asarray(tight[0]["w"]), rtol=1e-6, atol=1e-7)
