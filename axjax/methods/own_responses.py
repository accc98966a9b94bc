"""The model's own greedy answers to training instructions: RePS's y, the response its preference pairs set
against the concept response y_c (upstream's `losing_output`, reference section 6).

They are generated once per (model, instruction) with axjax's batched greedy decoding and cached in one parquet
file per model and length, which grows batch by batch (written atomically), so every method and run reuses
them and an interrupted generation resumes where it stopped.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Sequence

import pandas as pd

from axjax import atomic_files
from axjax.errors import AxjaxError
from axjax.generation.sampling import SamplingConfig
from axjax.generation.text import generate_text
from axjax.loading.load import LoadedModel
from axjax.loading.tokenizer import cache_dir

RESPONSE_TOKENS = 512  # RePS trains on responses of up to 512 tokens


def cache_path(model: LoadedModel, max_new_tokens: int, folder: str | None = None) -> str:
  """The cache file of `model`'s responses of up to `max_new_tokens` tokens (default folder:
  $AXJAX_CACHE/own_responses)."""
  name = re.sub(r"[^A-Za-z0-9._-]+", "_", model.name)
  return os.path.join(folder or os.path.join(cache_dir(), "own_responses"), f"{name}-{max_new_tokens}.parquet")


def own_responses(model: LoadedModel, instructions: Sequence[str], *, max_new_tokens: int = RESPONSE_TOKENS,
                  batch_size: int = 16, path: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[str]:
  """The model's greedy chat response to each instruction, from the cache where present, else generated (the
  cache file `path`, default `cache_path(model, max_new_tokens)`, gains each finished batch)."""
  path = path or cache_path(model, max_new_tokens)
  known = dict(zip(*_read(path))) if os.path.exists(path) else {}
  todo = list(dict.fromkeys(i for i in instructions if i not in known))  # unique, in order
  sampling = SamplingConfig(max_new_tokens, temperature=0.0)
  for start in range(0, len(todo), batch_size):
    batch = todo[start:start + batch_size]
    known.update(zip(batch, generate_text(model, batch, sampling=sampling, batch_size=batch_size)))
    atomic_files.write_parquet(path, pd.DataFrame({"instruction": list(known), "response": list(known.values())}))
    if progress is not None:
      progress(min(start + batch_size, len(todo)), len(todo))
  return [known[i] for i in instructions]


def _read(path: str) -> tuple[list[str], list[str]]:
  """The cached (instructions, responses), or one sentence if the file is not a response cache."""
  try:
    frame = pd.read_parquet(path, columns=["instruction", "response"])
  except Exception as e:  # pyarrow raises several types for a damaged or foreign file
    raise AxjaxError(f"the response cache {path} is not readable ({type(e).__name__}): delete it to "
                     "regenerate the responses") from None
  return frame["instruction"].tolist(), frame["response"].tolist()
