"""Concept dictionaries: validation, Orbax round trip, refusals, atomic saves, model-free loading, AxBench import."""

import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

try:
  import torch
except ImportError:
  torch = None

import axjax
from axjax.dictionary import (Dictionary, DictionaryError, check_compatible, import_axbench_dictionary,
                              load_dictionary, save_dictionary)
from axjax.dictionary import store

needs_torch = pytest.mark.skipif(torch is None, reason="writing AxBench .pt files needs torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_dictionary(num_concepts=3, width=8, layer=6, seed=0) -> Dictionary:
  rng = np.random.default_rng(seed)
  return Dictionary(weights=rng.normal(size=(num_concepts, width)), biases=rng.normal(size=num_concepts),
                    concept_ids=tuple(range(10, 10 + num_concepts)),
                    concept_names=tuple(f"concept {i}" for i in range(num_concepts)), method="DiffMean",
                    model_name="gemma-3-270m", layer=layer, hyperparameters={"lr": 0.01, "n_epochs": 3},
                    max_activations=np.arange(num_concepts, dtype=np.float64) + 0.5)


def assert_same(a: Dictionary, b: Dictionary):
  for name in ("weights", "biases", "max_activations", "thresholds"):
    x, y = getattr(a, name), getattr(b, name)
    assert x.dtype == y.dtype == np.float32, name
    np.testing.assert_array_equal(x, y, err_msg=name)  # NaN equals NaN here
  for name in ("concept_ids", "concept_names", "method", "model_name", "layer", "hyperparameters",
               "format_version", "hidden_size"):
    assert getattr(a, name) == getattr(b, name), name
  assert sorted(a.extras) == sorted(b.extras)
  for name in a.extras:
    assert a.extras[name].dtype == b.extras[name].dtype, name
    np.testing.assert_array_equal(a.extras[name], b.extras[name], err_msg=name)


def test_fields_are_normalised_and_read_only():
  d = make_dictionary()
  assert d.weights.dtype == np.float32 and d.num_concepts == 3 and d.hidden_size == 8
  assert np.isnan(d.thresholds).all() and d.max_activations.tolist() == [0.5, 1.5, 2.5]
  assert d.format_version == store.FORMAT_VERSION == 3 and d.extras == {}
  with pytest.raises(ValueError):
    d.weights[0, 0] = 1.0
  assert d.index_of(11) == 1


@pytest.mark.parametrize("changes, message", [
    (dict(weights=np.zeros(8)), "shape [C, d]"),
    (dict(weights=np.full((3, 8), np.nan)), "NaN"),
    (dict(biases=np.zeros(2)), "biases has shape (2,) but the dictionary has 3 concepts"),
    (dict(biases=np.zeros((3, 1))), "biases has shape (3, 1) but the dictionary has 3 concepts"),
    (dict(concept_names=("a", "b")), "has 3 concepts but 3 concept ids and 2 concept names"),
    (dict(concept_ids=(1, 2, 1)), "1 appears more than once"),
    (dict(thresholds=np.zeros(4)), "thresholds has shape (4,)"),
    (dict(layer=-1), "layer must be a non-negative integer"),
    (dict(method=""), "method must be a non-empty string"),
    (dict(hyperparameters={"f": float("nan")}), "JSON-serialisable"),
    (dict(hyperparameters={"f": object()}), "JSON-serialisable"),
    (dict(format_version=4), "format_version 4"),
    (dict(weights=None, width=None), "a dictionary without weights needs a positive model width"),
    (dict(width=9), "width 9 differs from the weights' width 8"),
    (dict(extras={"steering_vector": np.zeros((2, 8))}), "extra 'steering_vector' has shape (2, 8) but the "
                                                         "dictionary has 3 concepts"),
    (dict(extras={"jump_threshold": np.array([0.0, np.inf, 1.0])}), "extra 'jump_threshold' contains NaN"),
])
def test_bad_fields_raise_one_clear_error(changes, message):
  with pytest.raises(DictionaryError) as info:
    make_dictionary().replace(**changes)
  assert message in str(info.value)
  assert isinstance(info.value, axjax.AxjaxError)


def test_replace_and_select():
  d = make_dictionary()
  filled = d.replace(thresholds=[0.1, 0.2, 0.3])
  assert filled.thresholds.dtype == np.float32 and np.isnan(d.thresholds).all()  # d itself is unchanged
  sub = filled.select(cid for cid in (12, 10))
  assert sub.concept_ids == (12, 10) and sub.concept_names == ("concept 2", "concept 0")
  np.testing.assert_array_equal(sub.weights, d.weights[[2, 0]])
  np.testing.assert_allclose(sub.thresholds, [0.3, 0.1])
  np.testing.assert_array_equal(sub.max_activations, [2.5, 0.5])
  with pytest.raises(DictionaryError, match="concept id 99 is not in this dictionary"):
    d.select([10, 99])
  with pytest.raises(DictionaryError, match="concept id 99 is not in this dictionary"):
    d.index_of(99)


def test_round_trip_keeps_every_field(tmp_path):
  d = make_dictionary().replace(thresholds=[np.nan, 0.25, -1.0], hyperparameters={"lr": 0.01, "k": [1, "x"]})
  save_dictionary(tmp_path / "dict", d)
  loaded = load_dictionary(tmp_path / "dict", hidden_size=8, layer=6, model_name="gemma-3-270m")
  assert_same(d, loaded)
  assert sorted(os.listdir(tmp_path)) == ["dict"]  # no staging or orbax tmp folders left behind
  assert axjax.load_dictionary is load_dictionary and axjax.save_dictionary is save_dictionary


def test_npz_round_trip_keeps_every_field(tmp_path):
  d = make_dictionary().replace(thresholds=[np.nan, 0.25, -1.0], hyperparameters={"lr": 0.01, "k": [1, "x"]})
  store.save_dictionary_npz(str(tmp_path / "d.npz"), d)
  assert_same(d, store.load_dictionary_npz(str(tmp_path / "d.npz")))
  assert sorted(os.listdir(tmp_path)) == ["d.npz"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=640), "has width 8 but the model's hidden size is 640"),
    (dict(layer=20), "was trained for layer 6, not layer 20"),
    (dict(model_name="gemma-2-2b"), "was trained on model 'gemma-3-270m', not 'gemma-2-2b'"),
])
def test_load_refuses_another_model_or_layer(tmp_path, kwargs, message):
  save_dictionary(tmp_path / "dict", make_dictionary())
  with pytest.raises(DictionaryError, match=message):
    load_dictionary(tmp_path / "dict", **kwargs)


def test_check_compatible_with_a_config():
  config = axjax.PRESETS["gemma-3-270m"]
  d = make_dictionary(width=config.hidden_size)
  check_compatible(d, config, 6)
  with pytest.raises(DictionaryError, match="was trained for layer 6, not layer 5"):
    check_compatible(d, config, 5)
  with pytest.raises(DictionaryError, match=f"has width 8 but the model's hidden size is {config.hidden_size}"):
    check_compatible(make_dictionary(width=8), config, 6)
  with pytest.raises(axjax.AxjaxError, match="layer 40 is out of range"):
    check_compatible(make_dictionary(width=config.hidden_size, layer=40), config, 40)


def test_load_refuses_missing_foreign_and_newer(tmp_path):
  with pytest.raises(DictionaryError, match="no dictionary at .*missing: the path does not exist"):
    load_dictionary(tmp_path / "missing")
  (tmp_path / "folder").mkdir()
  (tmp_path / "folder" / "notes.txt").write_text("hello")
  with pytest.raises(DictionaryError, match="folder is not an axjax dictionary"):
    load_dictionary(tmp_path / "folder")
  other = tmp_path / "other_checkpoint"  # an Orbax checkpoint that is not a dictionary
  ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(
      other, ocp.args.Composite(metadata=ocp.args.JsonSave({"format": "something else"})))
  with pytest.raises(DictionaryError, match="other_checkpoint is not an axjax dictionary"):
    load_dictionary(other)
  newer = store._metadata(make_dictionary()) | {"format_version": 4}
  ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(
      tmp_path / "newer", ocp.args.Composite(metadata=ocp.args.JsonSave(newer)))
  with pytest.raises(DictionaryError, match="format version 4, newer than the version 3 this axjax reads"):
    load_dictionary(tmp_path / "newer")


def test_overwrite_only_when_asked_and_only_a_dictionary(tmp_path):
  path = tmp_path / "dict"
  save_dictionary(path, make_dictionary(seed=0))
  with pytest.raises(DictionaryError, match="already exists: pass overwrite=True to replace it"):
    save_dictionary(path, make_dictionary(seed=1))
  assert_same(load_dictionary(path), make_dictionary(seed=0))
  save_dictionary(path, make_dictionary(seed=1), overwrite=True)
  assert_same(load_dictionary(path), make_dictionary(seed=1))
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "precious.txt").write_text("keep me")
  with pytest.raises(DictionaryError, match="exists and is not an axjax dictionary: refusing to replace it"):
    save_dictionary(tmp_path / "data", make_dictionary(), overwrite=True)
  assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"
  assert sorted(os.listdir(tmp_path)) == ["data", "dict"]


def _fail_after_writing(monkeypatch, written):
  """Makes Orbax fail after every item is written but before it commits the checkpoint."""
  def finalize(self, directory):
    written.extend(os.path.relpath(os.path.join(root, name), directory)
                   for root, _, names in os.walk(directory) for name in names)
    raise OSError("simulated crash before commit")
  monkeypatch.setattr(ocp.CompositeCheckpointHandler, "finalize", finalize)


@pytest.mark.parametrize("previous", [False, True])
def test_failed_save_leaves_path_as_it_was(tmp_path, monkeypatch, previous):
  path = tmp_path / "dict"
  if previous:
    save_dictionary(path, make_dictionary(seed=0))
  written = []
  _fail_after_writing(monkeypatch, written)
  with pytest.raises(OSError, match="simulated crash"):
    save_dictionary(path, make_dictionary(seed=1), overwrite=True)
  # the failure really came after both items were written
  assert any(f.startswith("arrays") and f.endswith("manifest.ocdbt") for f in written), written
  assert any(f.startswith("metadata") and f.endswith("metadata") for f in written), written
  monkeypatch.undo()
  if previous:
    assert_same(load_dictionary(path), make_dictionary(seed=0))
  else:
    assert not path.exists()
  assert os.listdir(tmp_path) == (["dict"] if previous else [])


def test_failed_swap_restores_the_previous_dictionary(tmp_path, monkeypatch):
  path = tmp_path / "dict"
  save_dictionary(path, make_dictionary(seed=0))
  rename = os.rename

  def failing_rename(src, dst):
    if os.fspath(dst) == os.fspath(path) and os.path.basename(src) == "new":
      raise OSError("simulated failure moving the new dictionary in")
    rename(src, dst)
  monkeypatch.setattr(store.os, "rename", failing_rename)
  with pytest.raises(OSError, match="simulated failure"):
    save_dictionary(path, make_dictionary(seed=1), overwrite=True)
  monkeypatch.undo()
  assert_same(load_dictionary(path), make_dictionary(seed=0))
  assert os.listdir(tmp_path) == ["dict"]


def test_loads_in_a_fresh_process_without_model_code(tmp_path):
  """`import axjax` pulls in the model, so the child registers a bare `axjax` package that skips
  axjax/__init__.py: loading then works only if the dictionary code needs no model or training code."""
  save_dictionary(tmp_path / "dict", make_dictionary())
  script = f"""
import json, sys, types
package = types.ModuleType("axjax")
package.__path__ = [{os.path.join(ROOT, "axjax")!r}]
sys.modules["axjax"] = package
from axjax.dictionary import load_dictionary
d = load_dictionary({str(tmp_path / "dict")!r}, hidden_size=8, layer=6)
print(json.dumps({{"names": list(d.concept_names), "weights": d.weights.tolist(),
                  "modules": sorted(m for m in sys.modules if m.startswith(("axjax", "torch", "transformers")))}}))
"""
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["names"] == ["concept 0", "concept 1", "concept 2"]
  np.testing.assert_array_equal(np.float32(out["weights"]), make_dictionary().weights)
  assert out["modules"] == ["axjax", "axjax.atomic_files", "axjax.dictionary", "axjax.dictionary.axbench_import",
                            "axjax.dictionary.store", "axjax.errors", "axjax.processes"]  # processes: jax only


# AxBench import: files written the way AxBench's train stage writes them (torch.save).


def write_axbench(folder, weights, biases=None, concepts=None):
  """`{M}_weight.pt`, `{M}_bias.pt` and `metadata.jsonl` as AxBench's train stage leaves them."""
  torch.save(weights, folder / "LsReFT_weight.pt")
  if biases is not None:
    torch.save(biases, folder / "LsReFT_bias.pt")
  concepts = concepts if concepts is not None else [f"concept {i}" for i in range(weights.shape[0])]
  with open(folder / "metadata.jsonl", "w") as f:
    for cid, concept in enumerate(concepts):
      f.write(json.dumps({"concept_id": cid, "concept": concept, "ref": f"https://example/{cid}",
                          "concept_genres_map": {concept: ["text"]}}) + "\n")


@needs_torch
def test_import_axbench_dictionary_and_round_trip(tmp_path):
  weights, biases = torch.randn(4, 16), torch.randn(4)
  write_axbench(tmp_path, weights, biases)
  d = import_axbench_dictionary(tmp_path / "LsReFT_weight.pt", tmp_path / "metadata.jsonl", method="LsReFT",
                                model_name="google/gemma-2-2b-it", layer=20, bias_path=tmp_path / "LsReFT_bias.pt")
  np.testing.assert_array_equal(d.weights, weights.numpy())
  np.testing.assert_array_equal(d.biases, biases.numpy())
  assert d.concept_ids == (0, 1, 2, 3) and d.concept_names[3] == "concept 3"
  assert (d.method, d.model_name, d.layer, d.hidden_size) == ("LsReFT", "google/gemma-2-2b-it", 20, 16)
  assert d.hyperparameters == {"source": "axbench", "weight_file": "LsReFT_weight.pt",
                               "bias_file": "LsReFT_bias.pt"}
  save_dictionary(tmp_path / "dict", d)
  assert_same(load_dictionary(tmp_path / "dict", hidden_size=16, layer=20), d)


@needs_torch
def test_import_sorts_metadata_by_concept_id_and_reads_bfloat16(tmp_path):
  weights = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4)
  torch.save(weights.bfloat16(), tmp_path / "w.pt")
  lines = [{"concept_id": cid, "concept": f"c{cid}", "ref": "", "concept_genres_map": {}} for cid in (2, 0, 1)]
  (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
  d = import_axbench_dictionary(tmp_path / "w.pt", tmp_path / "metadata.jsonl", method="DiffMean",
                                model_name="m", layer=10)
  assert d.concept_names == ("c0", "c1", "c2") and d.weights.dtype == np.float32
  np.testing.assert_array_equal(d.weights, weights.numpy())
  np.testing.assert_array_equal(d.biases, np.zeros(3, np.float32))


@needs_torch
def test_import_refuses_mismatched_or_malformed_files(tmp_path):
  write_axbench(tmp_path, torch.randn(5, 8), torch.randn(4), concepts=["a", "b", "c", "d"])
  kwargs = dict(method="LsReFT", model_name="m", layer=20)
  with pytest.raises(DictionaryError, match="LsReFT_weight.pt has 5 rows but .*metadata.jsonl lists 4 concepts"):
    import_axbench_dictionary(tmp_path / "LsReFT_weight.pt", tmp_path / "metadata.jsonl", **kwargs)
  torch.save(torch.randn(4, 8), tmp_path / "LsReFT_weight.pt")
  torch.save(torch.randn(3), tmp_path / "LsReFT_bias.pt")
  with pytest.raises(DictionaryError, match="LsReFT_bias.pt has 3 biases but .* lists 4 concepts"):
    import_axbench_dictionary(tmp_path / "LsReFT_weight.pt", tmp_path / "metadata.jsonl",
                              bias_path=tmp_path / "LsReFT_bias.pt", **kwargs)
  torch.save({"proj_weight": torch.randn(4, 8, 4)}, tmp_path / "LoReFT_weight.pt")
  with pytest.raises(DictionaryError, match="holds dict, not the 2-axis tensor of a rank-1 dictionary"):
    import_axbench_dictionary(tmp_path / "LoReFT_weight.pt", tmp_path / "metadata.jsonl", **kwargs)
  (tmp_path / "bad.pt").write_text("not a pickle")
  with pytest.raises(DictionaryError, match="bad.pt is not a file written by torch.save"):
    import_axbench_dictionary(tmp_path / "bad.pt", tmp_path / "metadata.jsonl", **kwargs)
  with open(tmp_path / "metadata.jsonl", "a") as f:
    f.write(json.dumps({"concept_id": 0, "concept": "a"}) + "\n")
  with pytest.raises(DictionaryError, match="lists some concept ids more than once"):
    import_axbench_dictionary(tmp_path / "LsReFT_weight.pt", tmp_path / "metadata.jsonl", **kwargs)
  (tmp_path / "metadata.jsonl").write_text('{"concept": "a"}\n')
  with pytest.raises(DictionaryError, match="line 1 of .* lacks an integer concept_id or a string concept"):
    import_axbench_dictionary(tmp_path / "LsReFT_weight.pt", tmp_path / "metadata.jsonl", **kwargs)


@needs_torch
def test_import_without_torch_says_what_to_install(tmp_path, monkeypatch):
  write_axbench(tmp_path, torch.randn(2, 4))
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  with pytest.raises(DictionaryError, match=r"needs PyTorch, which is not installed \(pip install torch\)"):
    import_axbench_dictionary(tmp_path / "LsReFT_weight.pt", tmp_path / "metadata.jsonl", method="LsReFT",
                              model_name="m", layer=20)


def test_extras_round_trip_and_follow_the_concepts(tmp_path):
  """A method's own arrays (here an SAE feature's decoder row and jump threshold) save, load and select with
  their concepts, through Orbax and through the scratch .npz; steering then reads the decoder rows."""
  rng = np.random.default_rng(5)
  d = make_dictionary().replace(extras={"steering_vector": rng.normal(size=(3, 8)),
                                        "jump_threshold": np.array([0.5, 1.0, 2.0], np.float32),
                                        "feature": np.array([7, 3, 11])})
  save_dictionary(tmp_path / "dict", d)
  assert_same(load_dictionary(tmp_path / "dict"), d)
  store.save_dictionary_npz(str(tmp_path / "dict.npz"), d)
  assert_same(store.load_dictionary_npz(str(tmp_path / "dict.npz")), d)
  picked = d.select([12, 10])
  assert picked.extras["feature"].tolist() == [11, 7]
  np.testing.assert_array_equal(picked.steering_vectors(), d.extras["steering_vector"][[2, 0]])
  np.testing.assert_array_equal(make_dictionary().steering_vectors(), make_dictionary().weights)


def test_a_version_1_dictionary_still_loads(tmp_path):
  """Dictionaries written before the extras existed (format version 1: no extras in metadata or arrays)."""
  d = make_dictionary()
  meta = {k: v for k, v in store._metadata(d).items() if k != "extras"} | {"format_version": 1}
  arrays = {name: np.asarray(getattr(d, name)) for name in ("weights", "biases", "max_activations", "thresholds")}
  ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(
      tmp_path / "v1", ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), metadata=ocp.args.JsonSave(meta)))
  loaded = load_dictionary(tmp_path / "v1")
  assert loaded.format_version == 1 and loaded.extras == {}
  np.testing.assert_array_equal(loaded.weights, d.weights)


def test_a_method_without_directions_keeps_its_extras(tmp_path):
  """Adapters, classifiers and texts (no weights): saved, loaded, selected and concatenated per concept."""
  extras = {"rotation": np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4),
            "prompt": store.text_array(["café ☕", "", "a longer prompt"])}
  d = Dictionary(weights=None, biases=None, concept_ids=(4, 5, 6), concept_names=("a", "b", "c"), method="LoReFT",
                 model_name="m", layer=2, extras=extras, width=8)
  assert d.hidden_size == 8 and d.num_concepts == 3 and d.biases.tolist() == [0.0, 0.0, 0.0]
  with pytest.raises(DictionaryError, match="the LoReFT dictionary has no steering vectors"):
    d.steering_vectors()
  save_dictionary(tmp_path / "d", d)
  loaded = load_dictionary(tmp_path / "d", hidden_size=8, layer=2)
  assert loaded.weights is None and loaded.hidden_size == 8
  np.testing.assert_array_equal(loaded.extras["rotation"], extras["rotation"])
  assert store.texts_of(loaded.extras["prompt"]) == ["café ☕", "", "a longer prompt"]
  with pytest.raises(DictionaryError, match="has width 8 but the model's hidden size is 16"):
    load_dictionary(tmp_path / "d", hidden_size=16)
  parts = [d.select([4]), d.select([5, 6])]  # prompt widths 9 and 15 bytes: padded on concatenation
  merged = store.concatenate(parts)
  assert merged.concept_ids == (4, 5, 6) and store.texts_of(merged.extras["prompt"]) == store.texts_of(
      d.extras["prompt"])
  np.testing.assert_array_equal(merged.extras["rotation"], extras["rotation"])
