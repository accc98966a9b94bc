"""Tokenizers and chat templates through `transformers`, with an on-disk cache for GGUF-built tokenizers."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from absl import logging

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


def gguf_tokenizer(path: str):
  """The tokenizer stored in a GGUF file, converted once by transformers and then reloaded from disk."""
  import transformers

  stat = os.stat(path)
  key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
                       .encode()).hexdigest()[:16]
  target = os.path.join(cache_dir(), "tokenizers", f"{os.path.basename(path)}-{key}")
  if not os.path.isdir(target):
    logging.info("Converting the tokenizer in %s (once; cached in %s)", path, target)
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path) or ".", gguf_file=os.path.basename(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target))
    tok.save_pretrained(tmp)
    try:
      os.rename(tmp, target)  # atomic: a concurrent or interrupted conversion never leaves half a cache
    except OSError:
      shutil.rmtree(tmp, ignore_errors=True)
  return _with_chat_template(transformers.AutoTokenizer.from_pretrained(target), path)
