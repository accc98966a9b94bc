"""Peak host memory of `axjax.load` on a random-weight, sharded Hugging Face checkpoint.

`write_checkpoint` writes (once) a bfloat16 safetensors folder with a preset's shapes and HF's tensor names;
`measure` loads it in a fresh process (`python -m axjax.benchmarks.load_memory FOLDER DTYPE`), which prints
its resident-memory readings and load time as one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import ml_dtypes
import numpy as np
import safetensors.numpy

from axjax.model.config import GemmaConfig

_CHUNK = 1 << 24  # random values are drawn this many at a time, so no float32 copy of a whole tensor exists


def _rope(theta: float, scale: float) -> dict[str, Any]:
  """One HF rope-parameter dict."""
  if scale == 1.0:
    return {"rope_type": "default", "rope_theta": theta}
  return {"rope_type": "linear", "rope_theta": theta, "factor": scale}


def hf_config_dict(config: GemmaConfig) -> dict[str, Any]:
  """The HF config.json (transformers v5 shape) describing a GemmaConfig's architecture."""
  act = "gelu_pytorch_tanh" if config.approximate_gelu else "gelu"
  hf = {
      "model_type": {1: "gemma", 2: "gemma2", 3: "gemma3_text"}[config.family],
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim, "rms_norm_eps": config.rms_norm_eps, "hidden_act": act,
      "hidden_activation": act, "max_position_embeddings": config.max_position_embeddings,
      "tie_word_embeddings": True,
  }
  glob = _rope(config.rope_theta_global, config.rope_scale_global)
  if config.family == 3:
    hf["rope_parameters"] = {"full_attention": glob,
                             "sliding_attention": _rope(config.rope_theta_local, config.rope_scale_local)}
  else:
    hf["rope_parameters"] = glob
  if config.family >= 2:
    hf.update(layer_types=["sliding_attention" if s else "full_attention" for s in config.sliding_layers],
              sliding_window=config.sliding_window, query_pre_attn_scalar=config.query_pre_attn_scalar,
              attn_logit_softcapping=config.attn_logit_softcap, final_logit_softcapping=config.final_logit_softcap)
  return hf


def hf_tensor_shapes(config: GemmaConfig) -> dict[str, tuple[int, ...]]:
  """HF tensor names and shapes ([out, in] for linear weights) of a GemmaConfig, in checkpoint order."""
  d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
  layer = {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,)}
  if config.family >= 2:
    layer.update({"pre_feedforward_layernorm.weight": (d,), "post_feedforward_layernorm.weight": (d,)})
  layer.update({"self_attn.q_proj.weight": (config.num_heads * hd, d),
                "self_attn.k_proj.weight": (config.num_kv_heads * hd, d),
                "self_attn.v_proj.weight": (config.num_kv_heads * hd, d),
                "self_attn.o_proj.weight": (d, config.num_heads * hd)})
  if config.use_qk_norm:
    layer.update({"self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,)})
  layer.update({"mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f)})
  shapes = {"model.embed_tokens.weight": (config.vocab_size, d)}
  for i in range(config.num_layers):
    shapes.update({f"model.layers.{i}.{suffix}": shape for suffix, shape in layer.items()})
  shapes["model.norm.weight"] = (d,)
  return shapes


def random_bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """Normal(0, 0.02) values in bfloat16, drawn chunk by chunk."""
  out = np.empty(shape, ml_dtypes.bfloat16)
  flat = out.reshape(-1)
  for start in range(0, flat.size, _CHUNK):
    stop = min(start + _CHUNK, flat.size)
    flat[start:stop] = rng.standard_normal(stop - start, dtype=np.float32) * np.float32(0.02)
  return out


def plan_shards(shapes: dict[str, tuple[int, ...]], shard_bytes: int) -> list[list[str]]:
  """Tensor names per shard, in order, each shard closed once it holds at least `shard_bytes` of bfloat16."""
  shards, size = [[]], 0
  for name, shape in shapes.items():
    if size >= shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += 2 * int(np.prod(shape))
  return shards


def write_checkpoint(folder: str, config: GemmaConfig, shard_bytes: int = 2 << 30, seed: int = 0) -> str:
  """Writes a random bfloat16 HF checkpoint (shards of about `shard_bytes`, plus its index) unless present.

  Only one shard's tensors are in memory at a time.
  """
  if os.path.isfile(os.path.join(folder, "model.safetensors.index.json")):
    return folder
  tmp = f"{folder}.tmp-{os.getpid()}"
  os.makedirs(tmp)
  shapes = hf_tensor_shapes(config)
  shards = plan_shards(shapes, shard_bytes)
  rng = np.random.default_rng(seed)
  weight_map = {}
  for i, names in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    print(f"[load_memory] writing {file} ({len(names)} tensors)", file=sys.stderr, flush=True)
    tensors = {name: random_bf16(rng, shapes[name]) for name in names}
    safetensors.numpy.save_file(tensors, os.path.join(tmp, file), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(names, file))
  total = sum(2 * int(np.prod(shape)) for shape in shapes.values())
  with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump({**hf_config_dict(config), "dtype": "bfloat16"}, f, indent=2)
  os.rename(tmp, folder)  # atomic: an interrupted write never leaves a folder that looks complete
  return folder


def _rss_kib() -> int:
  """Current resident set size of this process, in KiB."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _peak_kib() -> int:
  """Peak resident set size of this process so far, in KiB (ru_maxrss on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(folder: str, dtype: str = "bfloat16") -> dict[str, Any]:
  """Loads `folder` with `axjax.load` in a fresh process; returns its memory readings and load time."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
      p for p in (root, os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, "-m", "axjax.benchmarks.load_memory", folder, dtype], cwd=root,
                        env=env, stdout=subprocess.PIPE, check=True, text=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _load_and_report(folder: str, dtype: str) -> dict[str, Any]:
  """Runs in the fresh process: baseline after importing jax and axjax, then peak and final RSS of the load."""
  import jax
  import jax.numpy as jnp

  import axjax

  jax.block_until_ready(jnp.zeros(1))  # start the backend before taking the baseline
  baseline = _rss_kib()
  start = time.perf_counter()
  model = axjax.load(folder, dtype=dtype)
  jax.block_until_ready(model.params)
  seconds = time.perf_counter() - start
  param_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(model.params))
  return {"param_bytes": param_bytes, "baseline_rss_bytes": baseline * 1024, "peak_rss_bytes": _peak_kib() * 1024,
          "final_rss_bytes": _rss_kib() * 1024, "load_seconds": seconds}


if __name__ == "__main__":
  print(json.dumps(_load_and_report(sys.argv[1], sys.argv[2])))
