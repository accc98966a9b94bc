"""Perplexity of generated continuations under the unsteered model: a fluency signal for steering reports.

Only the continuation's tokens are scored (given the prompt), so a long prompt does not dilute the signal.
AxBench instead scores the re-tokenised prompt + generation. Rows go in fixed-size, length-bucketed batches
and the loss is vocab-chunked (`token_nll`), so no [B, T, V] logits exist and few shapes compile.
"""

from __future__ import annotations

import functools
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax import processes
from axjax.errors import AxjaxError
from axjax.generation.text import encode_prompts, left_pad
from axjax.loading.load import LoadedModel
from axjax.model.config import GemmaConfig
from axjax.model.lm_loss import token_nll
from axjax.model.transformer import check_tokens, forward


def continuation_perplexity(model: LoadedModel, prompt_ids: Sequence[Sequence[int]],
                            continuation_ids: Sequence[Sequence[int]], batch_size: int = 16,
                            length_bucket: int = 32) -> np.ndarray:
  """float64 [N]: exp(mean NLL of each continuation's tokens given its prompt); nan for an empty continuation."""
  if len(prompt_ids) != len(continuation_ids):
    raise AxjaxError(f"got {len(prompt_ids)} prompts but {len(continuation_ids)} continuations")
  if any(len(p) == 0 for p in prompt_ids):
    raise AxjaxError("every prompt needs at least one token (e.g. BOS) to predict its continuation from")
  if batch_size < 1 or length_bucket < 1:
    raise AxjaxError(f"batch_size and length_bucket must be positive; got {batch_size} and {length_bucket}")
  out = np.full(len(prompt_ids), np.nan)
  todo = sorted((i for i, c in enumerate(continuation_ids) if len(c)),
                key=lambda i: len(prompt_ids[i]) + len(continuation_ids[i]))  # similar widths share a batch
  for start in range(0, len(todo), batch_size):
    index = todo[start:start + batch_size]
    rows = [list(prompt_ids[i]) + list(continuation_ids[i]) for i in index]
    cont_len = np.array([len(continuation_ids[i]) for i in index], np.int32)
    fill = batch_size - len(index)  # fixed batch shape: pad with copies of the last row, dropped below
    rows += [rows[-1]] * fill
    cont_len = np.concatenate([cont_len, np.repeat(cont_len[-1:], fill)])
    ids, mask = left_pad(rows, 0, length_bucket)  # the pad id never matters: padding is masked out
    check_tokens(ids, model.config)
    width = min(-(-int(cont_len.max()) // length_bucket) * length_bucket, ids.shape[1] - 1)
    nll = _mean_continuation_nll(model.params, model.config, ids, mask, cont_len, width)
    out[index] = np.exp(processes.to_host(nll).astype(np.float64)[:len(index)])
  return out


def text_perplexity(model: LoadedModel, prompts: Sequence[str], continuations: Sequence[str], chat: bool = True,
                    **kw) -> np.ndarray:
  """Perplexity of each continuation text after its prompt, the prompt encoded as generation encodes it."""
  if model.tokenizer is None:
    raise AxjaxError(f"{model.source} has no tokenizer, so it cannot score text")
  tok = model.tokenizer
  prompt_ids = encode_prompts(tok, prompts, chat)
  continuation_ids = [tok(c, add_special_tokens=False).input_ids for c in continuations]
  return continuation_perplexity(model, prompt_ids, continuation_ids, **kw)


@functools.partial(jax.jit, static_argnums=(1, 5))
def _mean_continuation_nll(params, config: GemmaConfig, ids, mask, cont_len, width: int) -> jax.Array:
  """Mean NLL [B] over each row's last `cont_len` tokens; left padding puts them in the last `width` slots."""
  chex.assert_rank([ids, mask, cont_len], [2, 2, 1])
  b, t = ids.shape
  hidden = forward(params, config, ids, mask, stop_after_layer=config.num_layers - 1).hidden
  h = hidden[:, t - width - 1:t - 1]  # the states that predict the last `width` tokens
  targets = ids[:, t - width:]
  nll = token_nll(params, config, h.reshape(b * width, -1), targets.reshape(-1)).reshape(b, width)
  scored = jnp.arange(width)[None, :] >= width - cont_len[:, None]
  return jnp.sum(jnp.where(scored, nll, 0.0), axis=1) / cont_len
