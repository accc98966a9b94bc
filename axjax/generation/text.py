"""Text in, text out: chat formatting, left padding to bucketed lengths and fixed-size batches.

Prompt lengths are rounded up to a multiple of `length_bucket` and batches padded to `batch_size` rows, so
a whole job compiles a handful of shapes at most.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from axjax import processes
from axjax.errors import AxjaxError
from axjax.generation.decode import generate_tokens
from axjax.generation.sampling import SamplingConfig
from axjax.loading.load import LoadedModel
from axjax.model.interventions import Intervention


def stop_token_ids(tokenizer) -> tuple[int, ...]:
  """EOS and Gemma's end-of-turn token, where the vocabulary has them."""
  ids = {tokenizer.eos_token_id}
  eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
  if isinstance(eot, int) and eot != tokenizer.unk_token_id:
    ids.add(eot)
  return tuple(sorted(i for i in ids if i is not None))


def encode_prompts(tokenizer, prompts: Sequence[str], chat: bool) -> list[list[int]]:
  """Token ids per prompt: as a user turn plus generation prompt (chat) or as plain text after BOS."""
  if chat:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False) for p in prompts]
  return [tokenizer(p).input_ids for p in prompts]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, bucket: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded [B, T] ids and mask, T the longest row rounded up to a multiple of `bucket`."""
  width = -(-max(len(r) for r in rows) // bucket) * bucket
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, row in enumerate(rows):
    ids[i, width - len(row):] = row
    mask[i, width - len(row):] = True
  return ids, mask


def generate_text(model: LoadedModel, prompts: Sequence[str], *, sampling: SamplingConfig = SamplingConfig(),
                  seed: int = 0, chat: bool = True, batch_size: int = 16, length_bucket: int = 32,
                  intervention: Intervention | None = None, intervention_params: Any = None,
                  progress: Callable[[int, int], None] | None = None) -> list[str]:
  """Completions for `prompts`. Per-prompt intervention params carry a leading axis of len(prompts); `progress`,
  if given, gets (prompts done, total) after each batch."""
  if model.tokenizer is None:
    raise AxjaxError(f"{model.source} has no tokenizer, so it cannot generate from text")
  if not prompts:
    return []
  tok = model.tokenizer
  pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
  encoded = encode_prompts(tok, prompts, chat)
  keys = jax.random.split(jax.random.key(seed), len(prompts))  # one per prompt: batching cannot change a row
  texts: list[str] = []
  for start in range(0, len(prompts), batch_size):
    rows = encoded[start:start + batch_size]
    n = len(rows)
    rows = rows + [rows[-1]] * (batch_size - n)  # fixed batch shape: pad with copies, dropped below
    row_keys = keys[start:start + n]
    row_keys = jnp.concatenate([row_keys, jnp.repeat(row_keys[-1:], batch_size - n)])
    ids, mask = left_pad(rows, pad_id, length_bucket)
    params = None
    if intervention_params is not None:
      params = jax.tree.map(lambda a: _rows(a, start, n, batch_size, len(prompts)), intervention_params)
    out = generate_tokens(model.params, model.config, ids, mask, row_keys, sampling, stop_token_ids(tok), pad_id,
                          intervention, params)
    tokens, lengths = processes.to_host(out.tokens), processes.to_host(out.lengths)
    texts += [tok.decode(tokens[i, :lengths[i]], skip_special_tokens=True) for i in range(n)]
    if progress is not None:
      progress(len(texts), len(prompts))
  return texts


def _rows(leaf, start: int, n: int, batch_size: int, total: int):
  """This batch's rows of a per-prompt parameter, padded to the batch size; shared leaves pass through."""
  leaf = np.asarray(leaf)
  if leaf.ndim == 0 or leaf.shape[0] != total:
    raise AxjaxError(f"per-prompt intervention parameters need a leading axis of {total} (one row per "
                     f"prompt); got shape {leaf.shape}")
  rows = leaf[start:start + n]
  return np.concatenate([rows, np.repeat(rows[-1:], batch_size - n, axis=0)])
