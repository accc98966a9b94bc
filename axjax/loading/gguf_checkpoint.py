"""Loads a Gemma GGUF file (llama.cpp format), dequantized to the requested dtype."""

from __future__ import annotations

from typing import Any

from axjax.errors import UnsupportedModelError
from axjax.loading.gguf_file import read_gguf, read_gguf_tensor
from axjax.loading.param_filler import ParamFiller
from axjax.loading.param_layout import gguf_target
from axjax.model.config import GemmaConfig, from_hf_config

_MODEL_TYPES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}
# GGUF metadata key (after "<arch>.") -> HF config key, as llama.cpp's converter writes them.
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.key_length": "head_dim",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.sliding_window": "sliding_window",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
}
# GGUF has no query_pre_attn_scalar: llama.cpp scales queries by head_dim ** -0.5, except for the 27B models
# (identified by their layer counts), which use (hidden_size / heads) ** -0.5.
_SCALE_BY_WIDTH_LAYERS = {"gemma2": 46, "gemma3": 62}
# llama.cpp stores Gemma's zero-centred norm weights with +1 folded in; we keep HF's convention.
NORM_OFFSET = 1.0


def hf_config_dict(path: str, meta: dict[str, Any], vocab_size: int) -> dict[str, Any]:
  """The HF config a GGUF file describes (missing entries take transformers' defaults)."""
  arch = meta.get("general.architecture")
  if arch not in _MODEL_TYPES:
    raise UnsupportedModelError(f"{path} holds architecture {arch!r}; axjax loads Gemma 1, 2 and 3 GGUF files")
  hf = {"model_type": _MODEL_TYPES[arch], "vocab_size": vocab_size}
  for key, hf_key in _CONFIG_KEYS.items():
    if f"{arch}.{key}" in meta:
      hf[hf_key] = meta[f"{arch}.{key}"]
  heads = hf.get("num_attention_heads", 1)
  head_dim = hf.get("head_dim") or hf.get("hidden_size", 0) // heads
  by_width = hf.get("num_hidden_layers") == _SCALE_BY_WIDTH_LAYERS.get(arch)
  hf["query_pre_attn_scalar"] = hf.get("hidden_size", 0) // heads if by_width else head_dim
  return hf


def load_gguf(path: str, dtype) -> tuple[GemmaConfig, dict, dict[str, Any]]:
  """Config, parameters and metadata of a GGUF file."""
  meta, tensors = read_gguf(path)
  by_name = {t.name: t for t in tensors}
  if "token_embd.weight" not in by_name:
    raise UnsupportedModelError(f"{path} has no token_embd.weight tensor: not a Gemma text model")
  config = from_hf_config(hf_config_dict(path, meta, by_name["token_embd.weight"].shape[0]))
  filler = ParamFiller(config, dtype, path)
  for tensor in tensors:
    target = gguf_target(tensor.name, config.family)
    if target is not None:
      offset = NORM_OFFSET if target.kind == "norm" else 0.0
      filler.put(target, tensor.name, read_gguf_tensor(path, tensor), norm_offset=offset)
  return config, filler.finish(), meta
