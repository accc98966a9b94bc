"""Tokenizers and chat templates through `transformers`, with an on-disk cache for GGUF-built tokenizers."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from absl import logging

from axjax.loading.gguf_file import read_gguf

# Gemma's turn format, for checkpoints (like the base 270M GGUF) that ship no chat template.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def cache_dir() -> str:
  """Where axjax keeps derived files (assembled GGUF, converted tokenizers): $AXJAX_CACHE or ~/.cache/axjax."""
  return os.environ.get("AXJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "axjax")


def _with_chat_template(tokenizer, source: str):
  if not getattr(tokenizer, "chat_template", None):
    logging.info("%s has no chat template; using Gemma's standard turn format", source)
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
  return tokenizer


def folder_tokenizer(folder: str):
  """The tokenizer saved in an HF folder, or None (with a log line) if the folder has none."""
  if not any(os.path.isfile(os.path.join(folder, n)) for n in _TOKENIZER_FILES):
    logging.warning("%s has no tokenizer files; the model loads without a tokenizer", folder)
    return None
  import transformers

  return _with_chat_template(transformers.AutoTokenizer.from_pretrained(folder), folder)


def _convert_gguf_tokenizer(path: str):
  """Builds the tokenizer a GGUF file describes with transformers' converter.

  transformers' own GGUF entry point reads the file through PyTorch; we read the fields ourselves (same key
  mapping) and call only its torch-free converter, so the library runs without PyTorch.
  """
  import transformers
  from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

  wanted = tuple(f"tokenizer.{key}" for group in GGUF_TOKENIZER_MAPPING.values() for key in group)
  meta, _ = read_gguf(path, arrays=wanted)
  grouped = {group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
             for group, renames in GGUF_TOKENIZER_MAPPING.items()}
  tokens, config = grouped["tokenizer"], grouped["tokenizer_config"]
  if tokens.get("tokenizer_type") == "llama":  # llama.cpp adds BOS to sentencepiece vocabularies by default
    config.setdefault("add_bos_token", True)
  for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                    ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
    token_id = meta.get(f"tokenizer.ggml.{key}")
    config[name] = tokens["tokens"][token_id] if token_id is not None else None
  backend, extra = convert_gguf_tokenizer(meta["general.architecture"], tokens)
  return transformers.GemmaTokenizer(tokenizer_object=backend, **config, **extra)


def gguf_tokenizer(path: str):
  """The tokenizer stored in a GGUF file, converted once and then reloaded from the on-disk cache."""
  import transformers

  stat = os.stat(path)
  key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
                       .encode()).hexdigest()[:16]
  target = os.path.join(cache_dir(), "tokenizers", f"{os.path.basename(path)}-{key}")
  if not os.path.isdir(target):
    logging.info("Converting the tokenizer in %s (once; cached in %s)", path, target)
    tok = _convert_gguf_tokenizer(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target))
    tok.save_pretrained(tmp)
    try:
      os.rename(tmp, target)  # atomic: a concurrent or interrupted conversion never leaves half a cache
    except OSError:
      shutil.rmtree(tmp, ignore_errors=True)
  return _with_chat_template(transformers.AutoTokenizer.from_pretrained(target), path)
