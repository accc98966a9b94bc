"""Gemma text-decoder configuration: one frozen dataclass for Gemma 1, 2 and 3, built from presets or HF configs."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from axjax.errors import AxjaxError, UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Architecture of a Gemma decoder; hashable so it can be a static argument of jitted functions."""

  family: int  # 1, 2 or 3
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  sliding_layers: tuple[bool, ...]  # per layer: True = local sliding-window attention
  sliding_window: int | None = None
  query_pre_attn_scalar: float | None = None  # queries are scaled by this ** -0.5 (default head_dim)
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  rope_theta_global: float = 10_000.0
  rope_theta_local: float = 10_000.0
  rope_scale_global: float = 1.0  # linear RoPE scaling factor (Gemma 3 4B+ global layers)
  rope_scale_local: float = 1.0
  use_post_norms: bool = False  # Gemma 2/3: norms after attention and MLP outputs
  use_qk_norm: bool = False  # Gemma 3: RMSNorm on queries and keys
  rms_norm_eps: float = 1e-6
  approximate_gelu: bool = True  # gelu_pytorch_tanh; False means exact erf GeLU
  max_position_embeddings: int = 8192

  def __post_init__(self):
    if len(self.sliding_layers) != self.num_layers:
      raise ValueError(f"sliding_layers has {len(self.sliding_layers)} entries for {self.num_layers} layers")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if any(self.sliding_layers) and not self.sliding_window:
      raise ValueError("sliding layers need a sliding_window size")

  @property
  def query_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def check_layer(self, layer: int) -> int:
    """Returns `layer` if it names a decoder layer, else raises one clear error."""
    if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
      raise AxjaxError(f"layer {layer!r} is out of range: this model has layers 0..{self.num_layers - 1}")
    return layer

  def replace(self, **changes) -> "GemmaConfig":
    return dataclasses.replace(self, **changes)


def _pattern(num_layers: int, period: int) -> tuple[bool, ...]:
  """Gemma's sliding/global layout: every `period`-th layer (1-based) is global."""
  return tuple((i + 1) % period != 0 for i in range(num_layers))


def _gemma1(vocab, d, ff, layers, heads, kv, hd) -> GemmaConfig:
  return GemmaConfig(family=1, vocab_size=vocab, hidden_size=d, intermediate_size=ff, num_layers=layers,
                     num_heads=heads, num_kv_heads=kv, head_dim=hd, sliding_layers=(False,) * layers)


def _gemma2(d, ff, layers, heads, kv, qscalar) -> GemmaConfig:
  return GemmaConfig(family=2, vocab_size=256_000, hidden_size=d, intermediate_size=ff, num_layers=layers,
                     num_heads=heads, num_kv_heads=kv, head_dim=256, sliding_layers=_pattern(layers, 2),
                     sliding_window=4096, query_pre_attn_scalar=qscalar, attn_logit_softcap=50.0,
                     final_logit_softcap=30.0, use_post_norms=True)


def _gemma3(d, ff, layers, heads, kv, hd, window, qscalar, vocab=262_144, rope_scale=1.0) -> GemmaConfig:
  return GemmaConfig(family=3, vocab_size=vocab, hidden_size=d, intermediate_size=ff, num_layers=layers,
                     num_heads=heads, num_kv_heads=kv, head_dim=hd, sliding_layers=_pattern(layers, 6),
                     sliding_window=window, query_pre_attn_scalar=qscalar, rope_theta_global=1_000_000.0,
                     rope_scale_global=rope_scale, use_post_norms=True, use_qk_norm=True,
                     max_position_embeddings=32_768 if rope_scale == 1.0 else 131_072)


# Shapes of the released checkpoints, for random-weight benchmarks and shape checks.
PRESETS: dict[str, GemmaConfig] = {
    "gemma-2b": _gemma1(256_000, 2048, 16_384, 18, 8, 1, 256),
    "gemma-7b": _gemma1(256_000, 3072, 24_576, 28, 16, 16, 256),
    "gemma-2-2b": _gemma2(2304, 9216, 26, 8, 4, 256),
    "gemma-2-9b": _gemma2(3584, 14_336, 42, 16, 8, 256),
    "gemma-2-27b": _gemma2(4608, 36_864, 46, 32, 16, 144),
    "gemma-3-270m": _gemma3(640, 2048, 18, 4, 1, 256, 512, 256),
    "gemma-3-1b": _gemma3(1152, 6912, 26, 4, 1, 256, 512, 256),
    "gemma-3-4b": _gemma3(2560, 10_240, 34, 8, 4, 256, 1024, 256, vocab=262_208, rope_scale=8.0),
    "gemma-3-12b": _gemma3(3840, 15_360, 48, 16, 8, 256, 1024, 256, vocab=262_208, rope_scale=8.0),
    "gemma-3-27b": _gemma3(5376, 21_504, 62, 32, 16, 128, 1024, 168, vocab=262_208, rope_scale=8.0),
}


def _rope(params: Mapping[str, Any] | None, what: str) -> tuple[float, float]:
  """(theta, linear scale) from one HF rope-parameter dict; other RoPE types are refused."""
  params = dict(params or {})
  kind = params.get("rope_type", params.get("type", "default"))
  if kind not in ("default", "linear"):
    raise UnsupportedModelError(f"{what} uses RoPE type {kind!r}; axjax supports 'default' and 'linear'")
  return float(params.get("rope_theta", 10_000.0)), float(params.get("factor", 1.0)) if kind == "linear" else 1.0


def _rope_settings(hf: Mapping[str, Any]) -> dict[str, float]:
  """Reads RoPE from both the transformers v5 (`rope_parameters`) and v4 (`rope_theta`, ...) config shapes."""
  rp = hf.get("rope_parameters")
  if rp and ("full_attention" in rp or "sliding_attention" in rp):
    glob, loc = rp.get("full_attention"), rp.get("sliding_attention") or rp.get("full_attention")
  elif rp:
    glob = loc = rp
  else:
    glob = dict(hf.get("rope_scaling") or {}, rope_theta=hf.get("rope_theta", 10_000.0))
    loc = {"rope_theta": hf.get("rope_local_base_freq", glob["rope_theta"])}
  (tg, sg), (tl, sl) = _rope(glob, "the global layers"), _rope(loc, "the sliding layers")
  return dict(rope_theta_global=tg, rope_scale_global=sg, rope_theta_local=tl, rope_scale_local=sl)


def _hf_text_config(hf: Mapping[str, Any]) -> dict[str, Any]:
  """The text-decoder part of an HF config, with transformers' defaults filled in."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    arch = ", ".join(hf.get("architectures") or []) or model_type
    raise UnsupportedModelError(
        f"unsupported architecture {arch!r} (model_type {model_type!r}): axjax loads Gemma 1, 2 and 3 "
        f"(model_type one of {', '.join(SUPPORTED_MODEL_TYPES)})")
  if model_type == "gemma3":  # multimodal wrapper: the decoder lives in text_config
    return _hf_text_config(dict(hf.get("text_config") or {}, model_type="gemma3_text"))
  import transformers  # imported late: configs are the only thing we take from it here

  known = {k: v for k, v in hf.items() if k not in ("architectures", "transformers_version", "model_type")}
  return {**transformers.AutoConfig.for_model(model_type, **known).to_dict(), "model_type": model_type}


def from_hf_config(hf: Mapping[str, Any]) -> GemmaConfig:
  """Builds a GemmaConfig from an HF config dict (transformers v4 or v5 shape, Gemma 1/2/3)."""
  c = _hf_text_config(hf)
  family = {"gemma": 1, "gemma2": 2, "gemma3_text": 3}[c["model_type"]]
  n = int(c["num_hidden_layers"])
  heads = int(c["num_attention_heads"])
  head_dim = int(c.get("head_dim") or c["hidden_size"] // heads)
  if c.get("layer_types"):
    sliding = tuple(t == "sliding_attention" for t in c["layer_types"])
  elif family == 3:
    sliding = _pattern(n, int(c.get("sliding_window_pattern") or 6))
  elif family == 2:
    sliding = _pattern(n, 2)
  else:
    sliding = (False,) * n
  act = c.get("hidden_act") if family == 1 else c.get("hidden_activation")
  act = act or c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
  if act not in ("gelu_pytorch_tanh", "gelu_new", "gelu"):
    raise UnsupportedModelError(f"unsupported MLP activation {act!r}")
  return GemmaConfig(
      family=family, vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
      intermediate_size=int(c["intermediate_size"]), num_layers=n, num_heads=heads,
      num_kv_heads=int(c.get("num_key_value_heads") or heads), head_dim=head_dim, sliding_layers=sliding,
      sliding_window=int(c["sliding_window"]) if any(sliding) else None,
      query_pre_attn_scalar=float(c.get("query_pre_attn_scalar") or head_dim),
      attn_logit_softcap=c.get("attn_logit_softcapping") if family >= 2 else None,
      final_logit_softcap=c.get("final_logit_softcapping") if family >= 2 else None,
      use_post_norms=family >= 2, use_qk_norm=family == 3, rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
      approximate_gelu=act != "gelu", max_position_embeddings=int(c.get("max_position_embeddings", 8192)),
      **_rope_settings(c))
