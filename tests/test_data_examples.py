"""Tokenised AxBench examples (binarized, LM, latent eval) and the fixed-shape minibatch iterator."""

import numpy as np
import pandas as pd
import pytest

from axjax.data import (binarized_examples, latent_eval_examples, lm_examples, minibatches, prefix_length,
                        read_axbench, steps_per_epoch, suffix_length)
from axjax.data.axbench_format import BUILTIN_ROOT
from axjax.errors import AxjaxError
from axjax.loading.load import embedded_gguf_path
from axjax.loading.tokenizer import gguf_tokenizer

NAME = "concept10/prod_2b_l20_v1"


@pytest.fixture(scope="module")
def tok():
  return gguf_tokenizer(embedded_gguf_path())


@pytest.fixture(scope="module")
def data():
  return read_axbench(NAME)


@pytest.fixture(scope="module")
def binarized(data, tok):
  return binarized_examples(data, tok)


@pytest.fixture(scope="module")
def lm_all(data, tok):
  return lm_examples(data, tok, train_on_negative=True, positions="all")


def _template(tok, user, assistant=None, generation_prompt=False):
  turns = [{"role": "user", "content": user}] + ([{"role": "assistant", "content": assistant}] if assistant else [])
  return tok.apply_chat_template(turns, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False)


def test_prefix_and_suffix_lengths(tok):
  assert prefix_length(tok) == 4 and suffix_length(tok) == 2
  ids = _template(tok, "hello")
  assert tok.convert_ids_to_tokens(ids[:4]) == ["<bos>", "<start_of_turn>", "user", "\n"]
  assert tok.convert_ids_to_tokens(ids[-2:]) == ["<end_of_turn>", "\n"]


def test_binarized_shapes_and_labels(binarized, data):
  c, n, t = 10, 144, binarized.tokens.shape[1]
  assert t % 32 == 0 and binarized.attention_mask.sum(1).max() < t  # every row ends in padding
  for name in ("tokens", "attention_mask", "score_mask", "probe_mask"):
    assert binarized.per_concept(name).shape == (c, n, t)
  assert binarized.tokens.dtype == np.int32 and binarized.labels.shape == (c, n) and binarized.row_valid.all()
  assert (binarized.labels[:, :72] == 1).all() and (binarized.labels[:, 72:] == 0).all()
  assert binarized.tokens.shape[0] == 10 * 72 + 216  # the pool negatives are tokenised once
  genres = np.array([c.genre for c in data.concepts])
  for a in range(c):
    for b in range(c):
      same = (binarized.index[a, 72:] == binarized.index[b, 72:]).all()
      assert same == (genres[a] == genres[b])


def test_binarized_text_matches_axbench(binarized, data, tok):
  rows = data.training_rows(0)
  for k in (0, 71, 72, 143):
    i, o = rows["input"][k], rows["output"][k]
    ids = _template(tok, i, o, generation_prompt=True)[1:-2]  # AxBench's quirk: generation prompt after the answer
    u = binarized.index[0, k]
    assert binarized.texts[u] == tok.decode(ids)
    assert binarized.texts[u].endswith("<end_of_turn>\n<start_of_turn>")
    n = int(binarized.attention_mask[u].sum())
    assert binarized.tokens[u, :n].tolist() == [tok.bos_token_id] + ids  # the decode/re-tokenise round trip is exact
    assert (binarized.tokens[u, n:] == tok.pad_token_id).all()


def test_binarized_masks_exclude_prefix(binarized):
  t = np.arange(binarized.tokens.shape[1])
  assert not binarized.score_mask[:, :4].any() and binarized.score_mask[:, 4:].any()
  np.testing.assert_array_equal(binarized.score_mask, binarized.attention_mask & (t >= 4))
  np.testing.assert_array_equal(binarized.probe_mask, binarized.attention_mask & (t >= 1))


def test_lm_loss_mask_covers_exactly_the_output(lm_all, data, tok):
  rows = data.training_rows(3)
  for k in range(0, 144, 13):
    u = lm_all.index[3, k]
    prompt = tok.decode(_template(tok, rows["input"][k], generation_prompt=True)[1:])
    full = tok(prompt + rows["output"][k])["input_ids"]
    p, n = len(tok(prompt)["input_ids"]), len(full)
    assert lm_all.texts[u] == prompt + rows["output"][k] and lm_all.prompt_lengths[u] == p
    assert lm_all.tokens[u, :n].tolist() == full
    assert np.flatnonzero(lm_all.loss_mask[u]).tolist() == list(range(p, n))
    assert np.flatnonzero(lm_all.intervention_mask[u]).tolist() == list(range(4, n))
    assert tok.decode(lm_all.tokens[u][lm_all.loss_mask[u]]) == rows["output"][k]
  real_last = lm_all.tokens[np.arange(len(lm_all.texts)), lm_all.attention_mask.sum(1) - 1]
  assert not np.isin(real_last, [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]).any()


def test_lm_positives_only_and_prompt_positions(data, tok, lm_all):
  lm = lm_examples(data, tok, concept_ids=[0, 5])
  assert lm.index.shape == (2, 72) and (lm.labels == 1).all() and lm.concept_ids.tolist() == [0, 5]
  assert lm_all.index.shape == (10, 144) and lm_all.labels[:, 72:].sum() == 0
  t = np.arange(lm.tokens.shape[1])
  expected = (t >= 4) & (t < lm.prompt_lengths[:, None])
  np.testing.assert_array_equal(lm.intervention_mask, expected)
  assert not (lm.intervention_mask & lm.loss_mask).any()
  with pytest.raises(AxjaxError, match=r"^positions must be one of all, all_prompt, not 'f5\+l5'$"):
    lm_examples(data, tok, positions="f5+l5")


def test_max_length_truncates(data, tok):
  lm = lm_examples(data, tok, concept_ids=[0], max_length=40)
  assert lm.tokens.shape[1] == 64 and lm.attention_mask.sum(1).max() == 40


def test_latent_eval_examples(data, tok):
  ev = latent_eval_examples(data, tok)
  assert ev.tokens.shape[0] == 755 and ev.tokens.shape[1] % 32 == 0
  assert ev.labels.sum() == 360 and ev.categories.count("hard negative") == 35
  np.testing.assert_array_equal(ev.concept_ids, data.latent_eval["concept_id"].to_numpy())
  row = data.latent_eval.iloc[0]
  ids = _template(tok, row["input"], row["output"])[1:-2]  # no generation prompt here
  assert ev.texts[0] == tok.decode(ids) and not ev.texts[0].endswith("<end_of_turn>")
  assert ev.tokens[0, :len(ids) + 1].tolist() == [tok.bos_token_id] + ids
  t = np.arange(ev.tokens.shape[1])
  np.testing.assert_array_equal(ev.score_mask, ev.attention_mask & (t >= 4))


def test_short_concept_gets_padding_rows(tmp_path, tok):
  source = BUILTIN_ROOT / NAME
  (tmp_path / "generate").mkdir()
  train = pd.read_parquet(source / "generate" / "train_data.parquet")
  keep = (train["concept_id"] == -1) | (train["concept_id"] == 0) | (train.index < 216 + 72 + 10)
  train[keep].to_parquet(tmp_path / "generate" / "train_data.parquet")  # concept 1 keeps 10 positives
  lines = (source / "generate" / "metadata.jsonl").read_text().splitlines()[:2]
  (tmp_path / "generate" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
  ex = binarized_examples(read_axbench(tmp_path), tok)
  assert ex.index.shape == (2, 144) and ex.row_valid.sum(1).tolist() == [144, 82]
  pad = ex.index[1, ~ex.row_valid[1]]
  assert (pad == len(ex.texts) - 1).all() and ex.texts[-1] == "" and not ex.attention_mask[-1].any()
  assert ex.labels[1].tolist() == [1] * 10 + [0] * 72 + [0] * 62


def test_minibatches_fixed_shapes_and_axbench_epochs():
  valid = np.ones((3, 144), bool)
  valid[2, 100:] = False
  assert steps_per_epoch(valid, 10) == 15
  batches = list(minibatches(valid, 10, epochs=2, seed=7, concept_ids=[4, 8, 9]))
  assert len(batches) == 30 and [b.step for b in batches] == list(range(30))
  assert all(b.positions.shape == (3, 10) and b.weight.shape == (3, 10) for b in batches)
  for epoch in (0, 1):
    steps = [b for b in batches if b.epoch == epoch]
    pos = np.concatenate([b.positions for b in steps], axis=1)
    weight = np.concatenate([b.weight for b in steps], axis=1)
    for c, n in enumerate((144, 144, 100)):
      assert sorted(pos[c][weight[c]].tolist()) == list(range(n))  # each example once per epoch
    assert steps[-1].weight.sum(1).tolist() == [4, 4, 0]  # AxBench's smaller last batch, as weights
  first = np.concatenate([b.positions for b in batches[:15]], axis=1)
  second = np.concatenate([b.positions for b in batches[15:]], axis=1)
  assert not (first[:, :144] == second[:, :144]).all()  # reshuffled every epoch
  assert not (first[0, :144] == first[1, :144]).all()  # each concept its own order


def test_minibatches_reproducible():
  valid = np.ones((2, 144), bool)
  a = [b.positions for b in minibatches(valid, 6, 3, seed=42)]
  b = [b.positions for b in minibatches(valid, 6, 3, seed=42)]
  c = [b.positions for b in minibatches(valid, 6, 3, seed=43)]
  assert all((x == y).all() for x, y in zip(a, b))
  assert not all((x == y).all() for x, y in zip(a, c))


def test_shared_rows_gather(binarized):
  batch = next(minibatches(binarized.row_valid, 6, 1, seed=0, concept_ids=binarized.concept_ids))
  rows = binarized.shared_rows(batch.positions)
  assert rows.shape == (10, 6)
  np.testing.assert_array_equal(binarized.tokens[rows],
                                np.take_along_axis(binarized.per_concept("tokens"), batch.positions[..., None], 1))
