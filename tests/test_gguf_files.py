"""GGUF files of every Gemma family, written in llama.cpp's layout from tiny HF models, load to the same logits."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import axjax
from axjax.loading.gguf_file import read_gguf
from conftest import padded_batch, tiny_hf_model

gguf = pytest.importorskip("gguf")

# HF per-layer names -> llama.cpp names (Gemma 1 calls its pre-MLP norm post_attention_layernorm).
_NAMES = {
    "input_layernorm": "attn_norm", "pre_feedforward_layernorm": "ffn_norm",
    "post_attention_layernorm": "post_attention_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str, arch: str) -> str:
  name = hf_name.removeprefix("model.").removesuffix(".weight")
  if name == "embed_tokens":
    return "token_embd.weight"
  if name == "norm":
    return "output_norm.weight"
  _, layer, rest = name.split(".", 2)
  if arch == "gemma" and rest == "post_attention_layernorm":
    return f"blk.{layer}.ffn_norm.weight"
  return f"blk.{layer}.{_NAMES[rest]}.weight"


def write_gguf(model, path: str) -> None:
  """What llama.cpp's converter writes for Gemma: architecture keys, float tensors, norms with +1 folded in."""
  c = model.config
  arch = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}[c.model_type]
  w = gguf.GGUFWriter(path, arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_key_length(c.head_dim)
  w.add_value_length(c.head_dim)
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  if arch != "gemma":
    w.add_sliding_window(c.sliding_window)
  if arch == "gemma2":
    w.add_float32(f"{arch}.attn_logit_softcapping", c.attn_logit_softcapping)
    w.add_float32(f"{arch}.final_logit_softcapping", c.final_logit_softcapping)
  if arch == "gemma3":
    w.add_rope_freq_base(c.rope_parameters["full_attention"]["rope_theta"])
  for name, tensor in model.state_dict().items():
    if name == "lm_head.weight":
      continue
    value = tensor.numpy().astype(np.float32)
    w.add_tensor(gguf_name(name, arch), value + 1.0 if "norm" in name else value)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("model_type", ["gemma", "gemma2", "gemma3"])
def test_gguf_matches_hf(model_type, tmp_path):
  model = tiny_hf_model(model_type, gguf_representable=True)
  path = str(tmp_path / "tiny.gguf")
  write_gguf(model, path)
  lm = axjax.load(path)
  assert lm.tokenizer is None
  ids, mask = padded_batch(np.random.default_rng(0), 128, lengths=[20, 9], width=20)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    ref = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(positions)).logits.numpy()
  got = np.asarray(axjax.forward(lm.params, lm.config, ids, mask).logits)
  assert np.abs(got - ref)[mask].max() <= 1e-4


def test_our_metadata_reader_agrees_with_gguf_package(tiny_gemma3, tmp_path):
  path = str(tmp_path / "tiny.gguf")
  write_gguf(tiny_gemma3[0], path)
  meta, tensors = read_gguf(path)
  ref = gguf.GGUFReader(path)
  assert meta["gemma3.block_count"] == ref.fields["gemma3.block_count"].contents() == 7
  assert [(t.name, t.shape) for t in tensors] == [(t.name, tuple(reversed(t.shape.tolist()))) for t in ref.tensors]
