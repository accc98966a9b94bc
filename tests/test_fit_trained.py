"""fit_method end to end for the gradient-trained methods on a tiny random model: training record, dead
latents and their remedy, and resuming a killed training run to identical numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import axjax
from axjax.data.batching import packed_loss_positions
from axjax.data.axbench_format import read_axbench
from axjax.methods import fit
from axjax.methods.fit import ActivationCache, fit_method

SHORT = {"LinearProbe": {"n_epochs": 2}, "ReFT-r1": {"n_epochs": 2}, "SSV": {"n_epochs": 1}}


@pytest.fixture(scope="module")
def cache(tiny_with_tokenizer):
  model = axjax.load(tiny_with_tokenizer)
  data = read_axbench("concept10/prod_2b_l20_v1", max_concepts=2)
  return ActivationCache(model, data, layer=1, max_examples=24)  # 12 positives and 12 negatives per concept


@pytest.mark.parametrize("name", ["LinearProbe", "ReFT-r1", "SSV"])
def test_trained_methods_record_every_step(cache, name):
  result = fit_method(name, cache, overrides=SHORT[name])
  d = result.dictionary
  assert d.weights.shape == (2, cache.model.config.hidden_size) and np.isfinite(d.weights).all()
  if name != "SSV":  # AxBench renormalises Probe and ReFT-r1 weights before each step
    np.testing.assert_allclose(np.linalg.norm(d.weights, axis=1), 1.0, atol=0.05)
  record = result.record
  per_epoch = {"LinearProbe": 2, "ReFT-r1": 4, "SSV": 2}[name]  # 24 (SSV: 12 positive) examples per concept
  assert len(record) == 2 * SHORT[name]["n_epochs"] * per_epoch
  assert sorted(record["concept_id"].unique()) == [0, 1] and np.isfinite(record["loss"]).all()
  parts = {"LinearProbe": {"bce", "accuracy"}, "ReFT-r1": {"lm", "l1", "fired"}, "SSV": {"lm", "fired"}}[name]
  assert parts <= set(record.columns)
  assert (record.groupby("concept_id")["step"].apply(list) == [list(range(len(record) // 2))] * 2).all()
  assert (result.dead is None) == (name == "LinearProbe")


def never_firing_direction(cache) -> np.ndarray:
  """A unit direction whose latent is negative on every intervened training token and pad state: minus the
  mean state, pushed away from the highest-scoring token until none scores above zero."""
  ex, acts = cache.examples("lm_all")
  states = np.concatenate([acts[ex.intervention_mask], acts[np.arange(len(acts)), ex.attention_mask.sum(1)]])
  w = -states.mean(0)
  for _ in range(1000):
    w /= np.linalg.norm(w)
    scores = states @ w
    if scores.max() < -1e-3:
      return w.astype(np.float32)
    w -= 0.1 * states[scores.argmax()] / np.linalg.norm(states[scores.argmax()])
  raise AssertionError("no never-firing direction found")


def test_dead_latents_are_found_and_the_diffmean_remedy_revives_them(cache, monkeypatch):
  """A ReFT-r1 direction whose latent never fires gets no gradient and is reported dead; the remedy retrains
  it from the concept's DiffMean direction, where it fires."""
  real_train = fit._train
  dead_start = np.stack([never_firing_direction(cache)] * 2)

  def train_from_dead_start(spec, hp, cache_, seed, progress, checkpoint_dir, subset=None, init=None):
    return real_train(spec, hp, cache_, seed, progress, checkpoint_dir, subset,
                      dead_start if init is None else init)

  monkeypatch.setattr(fit, "_train", train_from_dead_start)
  kept = fit_method("ReFT-r1", cache, overrides={"n_epochs": 1})
  assert kept.dead.all() and not kept.remedied.any()
  np.testing.assert_allclose(kept.dictionary.weights, dead_start, atol=1e-6)  # no gradient ever reached it
  remedied = fit_method("ReFT-r1", cache, overrides={"n_epochs": 1}, dead_latent_remedy="diffmean")
  assert remedied.remedied.all() and not remedied.dead.any()
  assert (remedied.record["remedy"] == "diffmean").all() and (remedied.record["fired"] > 0).any()


def test_killed_training_resumes_from_its_last_epoch_to_identical_numbers(cache, tmp_path):
  overrides = {"n_epochs": 3}
  whole = fit_method("ReFT-r1", cache, overrides=overrides)

  def kill_in_epoch_two(stage, done, total):
    if done == 4 + 2:  # 4 steps per epoch: the first epoch's state is saved, the second is half done
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    fit_method("ReFT-r1", cache, overrides=overrides, checkpoint_dir=str(tmp_path), progress=kill_in_epoch_two)
  steps_run = []
  resumed = fit_method("ReFT-r1", cache, overrides=overrides, checkpoint_dir=str(tmp_path),
                       progress=lambda stage, done, total: steps_run.append(done))
  assert steps_run[0] == 5 and steps_run[-1] == 12  # restarted after the first epoch, not from scratch
  np.testing.assert_array_equal(resumed.dictionary.weights, whole.dictionary.weights)
  np.testing.assert_array_equal(resumed.record["loss"].to_numpy(), whole.record["loss"].to_numpy())
  with pytest.raises(axjax.AxjaxError, match="holds training state saved with other settings"):
    fit_method("ReFT-r1", cache, overrides={"n_epochs": 3, "lr": 0.5}, checkpoint_dir=str(tmp_path),
               progress=kill_in_epoch_two)


def test_bfloat16_means_the_model_and_the_training_forward_run_in_bfloat16(tiny_with_tokenizer):
  """--dtype=bfloat16: cached activations and the upper layers in training are bf16; latents, losses and the
  trained weights stay float32."""
  model = axjax.load(tiny_with_tokenizer, "bfloat16")
  cache = ActivationCache(model, read_axbench("concept10/prod_2b_l20_v1", max_concepts=2), layer=1,
                          max_examples=12)
  ex, acts = cache.examples("lm_all")
  assert acts.dtype == jnp.bfloat16
  objective = fit.objectives.ReftR1Objective(fit.objectives.UpperModel(model.config, 1), 8, 5e-3)
  rows = np.arange(3)
  index, valid = packed_loss_positions(ex.loss_mask, rows[None], np.ones((1, 3)))
  batch = {"acts": acts[rows], "mask": ex.attention_mask[rows], "tokens": ex.tokens[rows],
           "position_mask": ex.intervention_mask[rows].astype(np.float32), "loss_index": index[0],
           "loss_valid": valid[0], "pad_acts": acts[rows, ex.attention_mask[rows].sum(1)], "weight": np.ones(3)}
  w = {"w": jnp.full((model.config.hidden_size,), 0.01)}
  jaxpr = str(jax.make_jaxpr(objective)(w, batch, 0.5, model.params))
  layer_dots = [line for line in jaxpr.splitlines() if "dot_general" in line and "bf16[" in line]
  assert len(layer_dots) == 9  # the scanned decoder layer: q, k, v, scores, mix, o, gate, up, down in bf16
  loss, parts = jax.jit(objective)(w, batch, 0.5, model.params)
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss)) and parts["lm"].dtype == jnp.float32
  result = fit_method("ReFT-r1", cache, overrides={"n_epochs": 1})
  assert result.dictionary.weights.dtype == np.float32 and np.isfinite(result.dictionary.weights).all()
