"""The SAE methods through the CLIs: a synthetic SAE in GemmaScope's layout, with one planted feature per
concept along its DiffMean direction among features that never fire, must have those features chosen (SAE-A,
SAE-MaxDiff) or taken as named (SAE), scored with their JumpReLU, and steered with their decoder rows or clamped
through their encoder as AxBench's full-SAE reconstruction does."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import axjax
from axjax.data.axbench_format import Concept, read_axbench
from axjax.data.examples import latent_eval_examples
from axjax.errors import AxjaxError
from axjax.generation.sampling import SamplingConfig
from axjax.generation.text import encode_prompts
from axjax.methods import sae as sae_lib
from axjax.methods import sae_methods
from axjax.methods.fit import ActivationCache, fit_method
from axjax.methods.scoring import token_scores
from axjax.model.interventions import Intervention
from axjax.steering_eval.row_steerers import sae_clamp_steerer
from tests.test_detect_cli import detect
from tests.test_every_method_cli import run

LAYER, PLANTED, FEATURES = 1, (5, 30), 48
COMMON = ["--layer=1", "--max_concepts=2", "--max_examples=12"]


def test_token_scores_cut_relu_columns_at_their_floor():
  """Linear columns h.w + b; ReLU columns z = h.w + b kept where z > max(floor, 0): numpy, column by column."""
  rng = np.random.default_rng(0)
  acts, weights, biases = rng.normal(size=(4, 16, 4)), rng.normal(size=(3, 4)), rng.normal(size=3) * 0.1
  relu, floors = np.array([False, True, True]), np.array([0.0, 0.0, 0.4])
  got = np.asarray(token_scores(acts.astype(np.float32), weights.astype(np.float32), biases.astype(np.float32),
                                relu, floors.astype(np.float32)))
  z = acts @ weights.T + biases
  np.testing.assert_allclose(got[..., 0], z[..., 0], rtol=1e-5)
  np.testing.assert_allclose(got[..., 1], np.maximum(z[..., 1], 0), rtol=1e-5)
  np.testing.assert_allclose(got[..., 2], np.where(z[..., 2] > 0.4, z[..., 2], 0), rtol=1e-5)
  assert ((z[..., 2] > 0) & (z[..., 2] <= 0.4)).any()  # the floor really cuts something here


@pytest.fixture(scope="module")
def planted_sae(tiny_with_tokenizer, tmp_path_factory):
  """params.npz: features that never fire (bias -1e3), but for PLANTED[c] = concept c's DiffMean direction."""
  model = axjax.load(tiny_with_tokenizer)
  data = read_axbench("concept10/prod_2b_l20_v1", max_concepts=2)
  cache = ActivationCache(model, data, LAYER, max_examples=12)
  directions = fit_method("DiffMean", cache).dictionary.weights
  rng = np.random.default_rng(1)
  d = model.config.hidden_size
  w_enc = rng.normal(size=(d, FEATURES)).astype(np.float32) * 0.01
  b_enc = np.full(FEATURES, -1e3, np.float32)
  threshold = np.full(FEATURES, 0.05, np.float32)
  for concept, feature in enumerate(PLANTED):
    w_enc[:, feature], b_enc[feature] = directions[concept], 0.0
  arrays = dict(W_enc=w_enc, b_enc=b_enc, threshold=threshold, W_dec=rng.normal(size=(FEATURES, d)).astype(np.float32),
                b_dec=np.zeros(d, np.float32))
  path = tmp_path_factory.mktemp("sae") / "params.npz"
  np.savez(path, **arrays)
  return str(path), arrays, model, data


def test_sae_methods_find_the_planted_features(planted_sae, tiny_with_tokenizer, tmp_path):
  path, arrays, model, data = planted_sae
  out = str(tmp_path / "run")
  result = detect(f"--model={tiny_with_tokenizer}", *COMMON, "--methods=SAE-A,GemmaScopeSAEMaxDiff,GemmaScopeSAE",
                  f"--sae_path={path}", f"--output_dir={out}", f"--sae_features=0:{PLANTED[0]},1:{PLANTED[1]}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert set(json.load(open(os.path.join(out, "detection.json")))) == {"SAE-A", "SAE-MaxDiff", "SAE"}
  ex = latent_eval_examples(data, model.tokenizer)
  acts = np.asarray(axjax.forward(model.params, model.config, ex.tokens, ex.attention_mask,
                                 stop_after_layer=LAYER).hidden, np.float64)
  for name in ("SAE-A", "SAE-MaxDiff", "SAE"):
    d = axjax.load_dictionary(os.path.join(out, "dictionaries", name), layer=LAYER)
    features = list(PLANTED)
    assert d.extras["feature"].tolist() == features, name
    np.testing.assert_array_equal(d.weights, arrays["W_enc"][:, features].T)
    np.testing.assert_array_equal(d.steering_vectors(), arrays["W_dec"][features])
    np.testing.assert_array_equal(d.extras["jump_threshold"], arrays["threshold"][features])
    # Each concept's max activation: GemmaScope's JumpReLU of its feature at the scored tokens of its own eval
    # rows, computed here in numpy from the layer activations.
    for column, concept in enumerate(d.concept_ids):
      rows = ex.concept_ids == concept
      z = acts[rows] @ arrays["W_enc"][:, features[column]] + arrays["b_enc"][features[column]]
      jump = np.where(z > arrays["threshold"][features[column]], z, 0.0)
      expected = np.where(ex.score_mask[rows], jump, -np.inf).max()
      np.testing.assert_allclose(d.max_activations[column], np.round(expected, 3), rtol=1e-4, atol=2e-3)


def test_sae_flags_are_refused_in_one_sentence(planted_sae, tiny_with_tokenizer, tmp_path):
  path, arrays, _, _ = planted_sae
  narrow = tmp_path / "narrow.npz"
  np.savez(narrow, **{k: (v[:32] if k in ("W_enc", "b_dec") else v[:, :32] if k == "W_dec" else v)
                      for k, v in arrays.items()})
  cases = {
      ("--methods=SAE-A",): "error: SAE-A selects features of a GemmaScope SAE: pass --sae_path",
      ("--methods=DiffMean", f"--sae_path={path}"): "error: --sae_path is given but no method reads it",
      ("--methods=SAE-A", f"--sae_path={narrow}"): "error: the SAE at",
      # Concept10's metadata names features of Gemma-2-2B's layer-20 16k SAE, not of this model's.
      ("--methods=SAE", f"--sae_path={path}"): "error: concept 0's metadata feature is of the SAE of gemma-2-2b "
                                               "layer 20, 16k features, not of this one",
      ("--methods=SAE-A", f"--sae_path={path}", "--sae_features=0:5"): "error: --sae_features is given but method "
                                                                      "SAE",
      ("--methods=SAE", f"--sae_path={path}", "--sae_features=0:5,1:48"): "error: concept 1's SAE feature 48 is "
                                                                         "out of range",
  }
  for flags, message in cases.items():
    result = detect(f"--model={tiny_with_tokenizer}", *COMMON, *flags, f"--output_dir={tmp_path / 'x'}",
                    timeout=300)
    assert result.returncode == 2, flags
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-500:]
  assert not os.path.exists(tmp_path / "x")


def _sae(features, model_name="google/gemma-2-2b", d=4):
  zeros = jnp.zeros
  return sae_lib.Sae(zeros((d, features)), zeros(features), zeros(features), zeros((features, d)), zeros(d),
                     source="x", model_name=model_name)


def test_concept_features_come_from_the_metadata_refs_or_the_flag(tmp_path):
  concepts = read_axbench("concept10/prod_2b_l20_v1", max_concepts=2).concepts
  assert [c.ref.rsplit("/", 1)[1] for c in concepts] == ["16038", "3409"]  # the shipped metadata's refs
  sae16k = _sae(16384)
  assert sae_methods.concept_features(concepts, sae16k, 20, "ignored") == {0: 16038, 1: 3409}
  assert sae_methods.concept_features(concepts, sae16k, 20, "x", {1: 7}) == {0: 16038, 1: 7}
  # The model the SAE names wins over the model's; "-it" and the owner do not matter.
  assert sae_methods.concept_features(concepts, _sae(16384, None), 20, "gemma-2-2b-it") == {0: 16038, 1: 3409}
  path = tmp_path / "features.json"
  path.write_text(json.dumps({"0": 11, "1": 12}))
  assert sae_methods.parse_features([str(path)]) == {0: 11, 1: 12}
  assert sae_methods.parse_features(["0:11", "1:12"]) == {0: 11, 1: 12}
  cases = [
      (lambda: sae_methods.concept_features(concepts, sae16k, 12, "x"), "layer 20, 16k features, not of this "
       "one (gemma-2-2b layer 12, 16k features)"),
      (lambda: sae_methods.concept_features(concepts, _sae(65536), 20, "x"), "(gemma-2-2b layer 20, 65k features)"),
      (lambda: sae_methods.concept_features(concepts, _sae(16384, "gemma-2-9b"), 20, "x"), "not of this one "
       "(gemma-2-9b layer 20"),
      (lambda: sae_methods.concept_features([Concept(3, "c", "text")], sae16k, 20, "x"), "concept 3 has no "
       "GemmaScope feature in its metadata"),
      (lambda: sae_methods.concept_features(concepts, sae16k, 20, "x", {5: 1}), "--sae_features names concept 5"),
      (lambda: sae_methods.concept_features(concepts, sae16k, 20, "x", {0: 16384}), "concept 0's SAE feature "
       "16384 is out of range"),
      (lambda: sae_methods.parse_features(["0=3"]), "--sae_features must be concept_id:feature pairs"),
      (lambda: sae_methods.read_max_activations(str(tmp_path / "none.json")), "--sae_max_acts"),
  ]
  for call, fragment in cases:
    with pytest.raises(AxjaxError, match=None) as error:
      call()
    assert fragment in str(error.value), str(error.value)


def _full_reconstruction_clamp(arrays, feature, target, at_least):
  """AxBench's DictionaryAdditionIntervention in jnp over all F features: dec(a') + (h - dec(a))."""
  def apply(_, h, ctx):
    z = h @ arrays["W_enc"] + arrays["b_enc"]
    a = jnp.where(z > arrays["threshold"], jnp.maximum(z, 0.0), 0.0)
    new = a.at[..., feature].set(jnp.maximum(a[..., feature], target) if at_least else target)
    dec = lambda x: x @ arrays["W_dec"] + arrays["b_dec"]
    return jnp.where(ctx.mask[..., None], dec(new) + (h - dec(a)), h)
  return apply


@pytest.mark.parametrize("minimum", [False, True])
def test_sae_clamping_rows_equal_axbench_full_reconstruction(planted_sae, minimum):
  """Each row clamps its own concept's feature to factor * its --sae_max_acts value: its greedy next token equals
  that of the model edited by AxBench's full-SAE reconstruction at every position."""
  path, arrays, model, data = planted_sae
  cache = ActivationCache(model, data, LAYER, max_examples=12, sae=sae_lib.load_sae(path, model.config.hidden_size),
                          sae_features=dict(enumerate(PLANTED)))
  dictionary = sae_methods.with_max_activations(fit_method("SAE", cache).dictionary, {PLANTED[0]: 40.0,
                                                                                      PLANTED[1]: 60.0})
  rows = pd.DataFrame({"concept_id": [0, 1, 1, 0], "factor": [2.0, 0.5, 3.0, 0.0]})
  prompt = encode_prompts(model.tokenizer, ["Write a sentence."], True)[0]
  ids = jnp.asarray([prompt] * len(rows), jnp.int32)
  mask = jnp.ones_like(ids, bool)
  steerer = sae_clamp_steerer(model, dictionary, LAYER, minimum, SamplingConfig(1, 0.0), (), 0)
  got = np.asarray(steerer.start(None)(model.params, ids, mask, jax.random.split(jax.random.key(0), len(rows)), rows).tokens)[:, 0]
  plain = np.asarray(axjax.forward(model.params, model.config, ids[:1], mask[:1]).logits)[0, -1]
  changed = 0
  for r, (concept, factor) in enumerate(zip(rows["concept_id"], rows["factor"])):
    feature, max_act = PLANTED[concept], (40.0, 60.0)[concept]
    edit = Intervention(LAYER, _full_reconstruction_clamp({k: jnp.asarray(v) for k, v in arrays.items()}, feature,
                                                          factor * max_act, minimum), width_keys=())
    logits = np.asarray(axjax.forward(model.params, model.config, ids[:1], mask[:1], intervention=edit,
                                      intervention_params={}).logits)[0, -1]
    top2 = np.sort(logits)[-2:]
    assert top2[1] - top2[0] > 1e-3  # no near tie: the greedy token is well defined
    assert got[r] == logits.argmax(), r
    changed += int(logits.argmax() != plain.argmax())
  assert changed >= 2  # the clamping does change what the model says


def test_sae_methods_steer_by_clamping_through_the_cli(planted_sae, tiny_with_tokenizer, tmp_path):
  path, _, _, _ = planted_sae
  max_acts = tmp_path / "max_acts.json"
  max_acts.write_text(json.dumps({str(PLANTED[0]): 40.0, str(PLANTED[1]): 60.0}))
  out = tmp_path / "steer"
  common = [f"--model={tiny_with_tokenizer}", "--layer=1", "--max_concepts=2", "--max_new_tokens=4",
            "--max_examples=12", "--factors=0.5,1", "--num_instructions=2", "--batch_size=4", f"--sae_path={path}"]
  result = run("steer", *common, "--methods=SAE,SAE-A", f"--sae_features=0:{PLANTED[0]},1:{PLANTED[1]}",
               "--intervention=min_clamping", f"--sae_max_acts={max_acts}", f"--output_dir={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = pd.read_parquet(out / "steering" / "rows.parquet")
  assert rows.groupby("method").size().to_dict() == {"SAE": 2 * 2 * 2, "SAE-A": 2 * 2 * 2}
  generations = pd.read_parquet(out / "steering" / "generations.parquet")
  assert len(generations) == len(rows) and (generations["generated_tokens"] > 0).all()
  settings = json.load(open(out / "run.json"))
  assert settings["sae_max_acts"] == {str(PLANTED[0]): 40.0, str(PLANTED[1]): 60.0}
  assert settings["protocol"]["intervention"] == "min_clamping"
  refused = run("steer", *common, "--methods=SAE,DiffMean", f"--sae_features=0:{PLANTED[0]},1:{PLANTED[1]}",
                "--intervention=min_clamping", f"--output_dir={tmp_path / 'x'}", timeout=300)
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines()[-1].startswith(
      "error: --intervention=min_clamping raises an SAE feature's activation and DiffMean has no SAE feature")
  assert not os.path.exists(tmp_path / "x")
