"""Output-centric descriptions equal an independent PyTorch computation on tiny random Gemma 1, 2 and 3 models:
the vocabulary projection (AxBench's `get_logits` formula on the HF model's own `model.norm` and `lm_head`) and
the steering effect (a forward hook adding strength * w to the output of HF decoder layer L)."""

import numpy as np
import pytest

import axjax
from axjax import atomic_files
from axjax.errors import AxjaxError
from axjax.evaluation import descriptions as desc
from conftest import padded_batch

LAYER, K = 2, 10


def vectors(seed, count=3, width=64, offset=0.5):
  """Random concept vectors with a nonzero mean, so the centring over the model width changes the ranking."""
  return np.random.default_rng(seed).normal(size=(count, width)).astype(np.float32) + offset


def torch_projection(model, weights, k):
  """AxBench's formula, literally: W_U = lm_head.T * (1 + norm.weight)[:, None], centred over d_model, w @ W_U."""
  torch = pytest.importorskip("torch")
  with torch.no_grad():
    unembed = model.lm_head.weight.T * (model.model.norm.weight + 1)[:, None]
    unembed = unembed - unembed.mean(dim=0, keepdim=True)
    scores = torch.tensor(weights) @ unembed
    high, low = scores.topk(k, dim=-1), scores.topk(k, dim=-1, largest=False)
  return scores.numpy(), high.indices.numpy(), high.values.numpy(), low.indices.numpy(), low.values.numpy()


def test_vocabulary_projection_matches_torch(tiny_checkpoint):
  model, folder = tiny_checkpoint
  lm = axjax.load(folder)
  weights = vectors(0)
  scores, high_ids, high, low_ids, low = torch_projection(model, weights, K)
  promoted, suppressed = desc.vocabulary_projection(lm.params, lm.config, weights, K)
  np.testing.assert_array_equal(promoted.ids, high_ids)
  np.testing.assert_array_equal(suppressed.ids, low_ids)
  np.testing.assert_allclose(promoted.values, high, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(suppressed.values, low, rtol=1e-5, atol=1e-6)
  uncentred = weights @ (model.lm_head.weight.detach().numpy() * (1 + model.model.norm.weight.detach().numpy())).T
  assert any(set(np.argsort(-u)[:K]) != set(h) for u, h in zip(uncentred, high_ids)), "centring not exercised"
  assert not np.allclose(lm.params["final_norm"]["scale"], 0), "the (1 + scale) factor is not exercised"


def test_vocabulary_chunks_do_not_change_the_result(tiny_gemma3):
  lm = axjax.load(tiny_gemma3[1])
  weights = vectors(1, count=5)
  whole = desc.vocabulary_projection(lm.params, lm.config, weights, K)
  chunked = desc.vocabulary_projection(lm.params, lm.config, weights, K, vocab_chunk=7)  # 7 < K: short chunks
  for a, b in zip(whole, chunked):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6)


def torch_probability_shift(model, weights, strengths, ids, mask):
  """Mean over prompts of p(next token | steered) - p(next token | plain), each prompt run unpadded."""
  torch = pytest.importorskip("torch")
  added = {}

  def hook(module, args, out):
    if "vector" not in added:
      return out
    if isinstance(out, tuple):
      return (out[0] + added["vector"],) + tuple(out[1:])
    return out + added["vector"]

  def mean_probs():
    with torch.no_grad():
      return np.mean([torch.softmax(model(torch.tensor(row[m][None], dtype=torch.long)).logits[0, -1], -1).numpy()
                      for row, m in zip(ids, mask)], axis=0)

  handle = model.model.layers[LAYER].register_forward_hook(hook)
  try:
    base = mean_probs()
    shifts = []
    for w, s in zip(weights, strengths):
      added["vector"] = torch.tensor(s * w)
      shifts.append(mean_probs() - base)
  finally:
    handle.remove()
  return np.stack(shifts)


def test_steering_effects_match_torch_hook(tiny_checkpoint):
  model, folder = tiny_checkpoint
  lm = axjax.load(folder)
  weights, strengths = vectors(2, offset=0.0), np.array([3.0, -2.0, 5.0], np.float32)
  ids, mask = padded_batch(np.random.default_rng(3), 128, lengths=[5, 9, 3, 7, 9, 1, 4, 6], width=9)
  want = torch_probability_shift(model, weights, strengths, ids, mask)
  assert np.abs(want).max() > 1e-3, "steering should move the distribution visibly"
  # k = V returns every token's shift, sorted; rows_per_batch=16 puts two concepts per batch, the last one padded.
  raises, lowers = desc.steering_effects(lm.params, lm.config, weights, LAYER, strengths, ids, mask, k=128,
                                         rows_per_batch=16)
  for row in range(len(weights)):
    np.testing.assert_allclose(raises.values[row], want[row][raises.ids[row]], atol=1e-7)
    np.testing.assert_allclose(lowers.values[row], want[row][lowers.ids[row]], atol=1e-7)
    np.testing.assert_array_equal(raises.ids[row, :K], np.argsort(-want[row], kind="stable")[:K])
    np.testing.assert_array_equal(lowers.ids[row, :K], np.argsort(want[row], kind="stable")[:K])
  top, bottom = desc.steering_effects(lm.params, lm.config, weights, LAYER, strengths, ids, mask, k=K,
                                     rows_per_batch=16)
  np.testing.assert_array_equal(top.ids, raises.ids[:, :K])
  np.testing.assert_array_equal(bottom.ids, lowers.ids[:, :K])


@pytest.fixture(scope="module")
def with_tokenizer(tiny_with_tokenizer):
  return axjax.load(tiny_with_tokenizer)


def dictionary(width, layer=1, count=3):
  return axjax.Dictionary(weights=vectors(4, count, width), biases=np.zeros(count), concept_ids=(7, 3, 11)[:count],
                          concept_names=("ocean | sea", "cats", "legal\nterms")[:count], method="DiffMean",
                          model_name="tiny", layer=layer)


def test_describe_decodes_writes_and_reads_back(with_tokenizer, tmp_path):
  lm, d = with_tokenizer, dictionary(with_tokenizer.config.hidden_size)
  got = desc.describe(lm, d, strength=[4.0, 8.0, -4.0], k=5)
  assert (got["method"], got["layer"], got["prompts"]) == ("DiffMean", 1, list(desc.NEUTRAL_PROMPTS))
  assert [c["concept_id"] for c in got["concepts"]] == [7, 3, 11]
  assert [c["strength"] for c in got["concepts"]] == [4.0, 8.0, -4.0]
  promoted, _ = desc.vocabulary_projection(lm.params, lm.config, d.weights, 5)
  for row, concept in enumerate(got["concepts"]):
    assert [e["id"] for e in concept["promoted"]] == promoted.ids[row].tolist()
    for key in ("promoted", "suppressed", "steering_raises", "steering_lowers"):
      assert len(concept[key]) == 5
      assert all(e["token"] == lm.tokenizer.decode([e["id"]]) for e in concept[key])
    values = [e["value"] for e in concept["steering_raises"]]
    assert values == sorted(values, reverse=True) and values[0] > 0
  path = desc.write_descriptions(str(tmp_path / "out"), [got])
  assert path.endswith("descriptions.json") and atomic_files.read_json(path) == [got]
  table = desc.markdown_table(got, tokens=3)
  assert "DiffMean (layer 1)" in table and "| 7: ocean \\| sea |" in table and "legal terms" in table
  assert len(table.strip().splitlines()) == 4 + 3


def test_bad_input_raises_one_clear_error(with_tokenizer, tiny_gemma3):
  lm = with_tokenizer
  with pytest.raises(AxjaxError, match="width 32 but the model's hidden size is 64"):
    desc.describe(lm, dictionary(32), strength=1.0)
  with pytest.raises(AxjaxError, match="out of range"):
    desc.describe(lm, dictionary(64, layer=9), strength=1.0)
  with pytest.raises(AxjaxError, match="one per concept"):
    desc.describe(lm, dictionary(64), strength=[1.0, 2.0])
  with pytest.raises(AxjaxError, match="k must be"):
    desc.vocabulary_projection(lm.params, lm.config, vectors(0), k=0)
  with pytest.raises(AxjaxError, match=r"shape \[C, 64\]"):
    desc.vocabulary_projection(lm.params, lm.config, np.zeros(64), k=3)
  with pytest.raises(AxjaxError, match="no tokenizer"):
    desc.describe(axjax.load(tiny_gemma3[1]), dictionary(64), strength=1.0)
