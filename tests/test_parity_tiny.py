"""axjax equals transformers (PyTorch) on tiny random Gemma 1, 2 and 3 checkpoints loaded through `axjax.load`,
in float32 at full matmul precision (set for every test in conftest.py)."""

import json
import os

import numpy as np
import pytest

import axjax
from conftest import WINDOW, padded_batch


def reference(model, ids, mask):
  """HF logits and the output of every decoder layer (forward hooks, as AxBench reads them)."""
  torch = pytest.importorskip("torch")  # only the reference needs PyTorch; the config tests run without it
  outs = []
  hooks = [layer.register_forward_hook(lambda m, i, o: outs.append((o[0] if isinstance(o, tuple) else o).numpy()))
           for layer in model.model.layers]
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # what HF's generate uses for left padding
  with torch.no_grad():
    logits = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                   position_ids=torch.tensor(positions)).logits.numpy()
  for h in hooks:
    h.remove()
  return logits, outs


def test_logits_and_every_layer_match(tiny_checkpoint):
  model, folder = tiny_checkpoint
  lm = axjax.load(folder)
  assert len(os.listdir(folder)) > 3, "fixture should be sharded with an index"
  ids, mask = padded_batch(np.random.default_rng(0), 128, lengths=[3 * WINDOW, 2 * WINDOW + 3, 5], width=3 * WINDOW)
  ref_logits, ref_hidden = reference(model, ids, mask)
  out = axjax.forward(lm.params, lm.config, ids, mask, collect_hidden=True)
  assert np.abs(np.asarray(out.logits) - ref_logits)[mask].max() <= 1e-4
  assert out.all_hidden.shape[0] == lm.config.num_layers == len(ref_hidden)
  for layer, ref in enumerate(ref_hidden):
    got = np.asarray(out.all_hidden[layer])
    scale = np.abs(ref[mask]).max()
    assert np.abs(got - ref)[mask].max() <= 1e-5 * max(scale, 1.0), f"layer {layer}"


def test_gemma3_layout_is_five_local_one_global(tiny_gemma3):
  _, folder = tiny_gemma3
  config = axjax.load(folder).config
  assert config.sliding_layers == (True,) * 5 + (False, True)
  assert (config.rope_scale_global, config.rope_scale_local) == (8.0, 1.0)
  assert config.sliding_window == WINDOW and config.use_qk_norm and config.use_post_norms


def test_transformers_v4_config_shape_reads_the_same(tiny_gemma3, tmp_path):
  """A config.json written by transformers v4 (rope_theta, rope_local_base_freq, rope_scaling, pattern)."""
  _, folder = tiny_gemma3
  with open(os.path.join(folder, "config.json")) as f:
    v5 = json.load(f)
  v4 = {k: v for k, v in v5.items() if k not in ("rope_parameters", "layer_types")}
  v4.update(rope_theta=1e6, rope_local_base_freq=10_000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
            sliding_window_pattern=6)
  assert axjax.from_hf_config(v4) == axjax.from_hf_config(v5)


def test_multimodal_gemma3_config_uses_its_text_config(tiny_gemma3):
  _, folder = tiny_gemma3
  with open(os.path.join(folder, "config.json")) as f:
    text = json.load(f)
  wrapped = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": text}
  assert axjax.from_hf_config(wrapped) == axjax.from_hf_config(text)


def test_presets_match_hf_defaults():
  """Our preset for Gemma 2 2B equals what transformers' Gemma2 config defaults (the 2B shapes) give us."""
  hf = {"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "query_pre_attn_scalar": 256, "sliding_window": 4096, "max_position_embeddings": 8192}
  assert axjax.from_hf_config(hf) == axjax.PRESETS["gemma-2-2b"]
