"""Maps checkpoint tensor names (Hugging Face and GGUF) onto axjax's stacked parameter layout.

HF linear weights are [out, in]; ours are [in, ...] (q: [d, H, hd], o: [H, hd, d], gate: [d, F]), so every
linear weight becomes `W.T.reshape(target_shape)`. Norm scales keep HF's zero-centred (1 + w) convention.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# HF per-layer suffix -> path inside params["layers"], for Gemma 2/3 (Gemma 1 differs in one name, below).
_LAYER_NAMES = {
    "input_layernorm.weight": ("input_norm", "scale"),
    "post_attention_layernorm.weight": ("post_attn_norm", "scale"),
    "pre_feedforward_layernorm.weight": ("pre_mlp_norm", "scale"),
    "post_feedforward_layernorm.weight": ("post_mlp_norm", "scale"),
    "self_attn.q_proj.weight": ("attn", "q"),
    "self_attn.k_proj.weight": ("attn", "k"),
    "self_attn.v_proj.weight": ("attn", "v"),
    "self_attn.o_proj.weight": ("attn", "o"),
    "self_attn.q_norm.weight": ("attn", "q_norm", "scale"),
    "self_attn.k_norm.weight": ("attn", "k_norm", "scale"),
    "mlp.gate_proj.weight": ("mlp", "gate"),
    "mlp.up_proj.weight": ("mlp", "up"),
    "mlp.down_proj.weight": ("mlp", "down"),
}
# Gemma 1 has no post-attention norm: its `post_attention_layernorm` is the norm before the MLP.
_GEMMA1_LAYER_NAMES = {**_LAYER_NAMES, "post_attention_layernorm.weight": ("pre_mlp_norm", "scale")}

# GGUF (llama.cpp) per-layer names -> HF per-layer suffixes.
_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

_HF_PREFIX = re.compile(r"^(?:model\.language_model\.|language_model\.model\.|model\.)")
_HF_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_GGUF_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")


class Target(NamedTuple):
  """Where a checkpoint tensor goes: a path in the params tree, the layer (None if not stacked), its kind."""

  path: tuple[str, ...]
  layer: int | None
  kind: str  # "linear" ([out, in] -> transpose + reshape), "norm" or "embed" (copied as is)


def _layer_target(family: int, layer: int, suffix: str) -> Target | None:
  names = _GEMMA1_LAYER_NAMES if family == 1 else _LAYER_NAMES
  if suffix == "pre_feedforward_layernorm.weight" and family == 1:
    return None
  path = names.get(suffix)
  if path is None:
    return None
  return Target(("layers",) + path, layer, "norm" if path[-1] == "scale" else "linear")


def hf_target(name: str, family: int) -> Target | None:
  """Target of an HF safetensors tensor, or None for tensors axjax does not use (vision tower, lm_head)."""
  if name.startswith(("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal")):
    return None
  short = _HF_PREFIX.sub("", name)
  if short == "embed_tokens.weight":
    return Target(("embed",), None, "embed")
  if short == "norm.weight":
    return Target(("final_norm", "scale"), None, "norm")
  m = _HF_LAYER.match(short)
  return _layer_target(family, int(m.group(1)), m.group(2)) if m else None


def gguf_target(name: str, family: int) -> Target | None:
  """Target of a GGUF tensor (names as llama.cpp writes them for Gemma)."""
  if name == "token_embd.weight":
    return Target(("embed",), None, "embed")
  if name == "output_norm.weight":
    return Target(("final_norm", "scale"), None, "norm")
  m = _GGUF_LAYER.match(name)
  if not m:
    return None
  suffix = m.group(2)
  if suffix == "ffn_norm.weight":  # the norm before the MLP, whatever the family calls it
    return Target(("layers", "pre_mlp_norm", "scale"), int(m.group(1)), "norm")
  hf = _GGUF_LAYER_NAMES.get(suffix)
  return _layer_target(family, int(m.group(1)), hf) if hf else None
