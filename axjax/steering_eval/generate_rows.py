"""Generates every steering row in fixed-shape compiled batches, each row with its own vector, strength and key.

Finished batches are written to a shard folder as they complete, so a killed run resumes where it stopped.
A row's key depends only on (seed, concept, factor, instruction): methods are compared on common random
numbers, and neither batching nor resuming changes what a row samples.
"""

from __future__ import annotations

import glob
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from axjax import atomic_files, processes, sharding
from axjax.data.chat_format import prefix_length
from axjax.evaluation.perplexity import continuation_perplexity
from axjax.generation.decode import generate_tokens
from axjax.generation.sampling import SamplingConfig
from axjax.generation.text import encode_prompts, left_pad, stop_token_ids
from axjax.loading.load import LoadedModel
from axjax.model.interventions import clamping, steering, steering_params
from axjax.steering_eval.protocol import SteeringProtocol
from axjax.steering_eval.row_steerers import RowSteerer, Run

COLUMNS = {"row_id": "int64", "generation": "object", "generated_tokens": "int32", "perplexity": "float64"}
Progress = Callable[[int, int], None]


def row_keys(seed: int, rows: pd.DataFrame) -> jax.Array:
  """[N] sampling keys from (seed, concept_id, factor_index, instruction_id)."""
  fold = jax.vmap(jax.random.fold_in)
  keys = jnp.broadcast_to(jax.random.key(seed), (len(rows),))
  for column in ("concept_id", "factor_index", "instruction_id"):
    keys = fold(keys, jnp.asarray(rows[column].to_numpy(np.uint32)))
  return keys


def read_shards(shard_dir: str) -> pd.DataFrame:
  """Every finished row in `shard_dir` (empty if none)."""
  parts = [pd.read_parquet(p) for p in sorted(glob.glob(os.path.join(shard_dir, "part-*.parquet")))]
  empty = pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in COLUMNS.items()})
  return pd.concat([empty, *parts], ignore_index=True).astype(COLUMNS)


def generate_rows(model: LoadedModel, rows: pd.DataFrame, vectors: np.ndarray, strengths: np.ndarray, *,
                  layer: int, protocol: SteeringProtocol, seed: int, batch_size: int, shard_dir: str,
                  length_bucket: int = 32, progress: Progress | None = None,
                  mesh: jax.sharding.Mesh | None = None, params=None,
                  steerers: Mapping[str, RowSteerer] | None = None) -> pd.DataFrame:
  """Generation, its token count and its perplexity under the unsteered model for every row (COLUMNS).

  `rows` as from `steering_rows` (positional index), `vectors` [N, d] and `strengths` [N] from `row_vectors`
  for the rows of methods that add a vector; the rows of a method in `steerers` generate its way instead (one
  group per method, or per concept for a `per_concept` steerer), their vector rows unused. Perplexity is
  always that of the generation after the instruction's own chat prompt.
  With a `mesh`, each batch's rows (the batch rounded up to a multiple of its concept axis) are split over
  that axis; `params`: the model's weights already placed on it (default: `model.params`).
  """
  tok = model.tokenizer
  pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
  steerers = steerers or {}
  done = read_shards(shard_dir)
  todo = np.flatnonzero(~rows["row_id"].isin(done["row_id"]).to_numpy())
  if progress is not None:
    progress(len(rows) - len(todo), len(rows))
  if not len(todo):
    return _ordered(done, rows)
  unique = list(rows["instruction"].unique())
  prompts = dict(zip(unique, encode_prompts(tok, unique, True)))
  encoded = [prompts[i] for i in rows["instruction"]]
  keys = row_keys(seed, rows)
  sampling = SamplingConfig(protocol.max_new_tokens, protocol.temperature)
  stops = stop_token_ids(tok)
  batch_size, put = sharding.batch_placement(mesh, batch_size)
  params = model.params if params is None else params
  state = {"done": done, "finished": len(rows) - len(todo)}

  def run_group(group: np.ndarray, run: Run, inputs: list[list[int]]) -> None:
    group = group[np.lexsort((group, [len(inputs[i]) for i in group]))]  # short prompts together: little padding
    for start in range(0, len(group), batch_size):
      batch = group[start:start + batch_size]
      padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch))])  # fixed batch shape
      ids, mask = left_pad([inputs[i] for i in padded], pad_id, length_bucket)
      out = run(params, *put(ids, mask, keys[padded]), rows.iloc[padded])
      tokens, lengths = processes.to_host(out.tokens), processes.to_host(out.lengths)
      generated = [tokens[j, :lengths[j]].tolist() for j in range(len(batch))]
      perplexity = continuation_perplexity(model, [encoded[i] for i in batch], generated, batch_size=batch_size)
      shard = pd.DataFrame({"row_id": rows["row_id"].to_numpy()[batch],
                            "generation": [tok.decode(g, skip_special_tokens=True) for g in generated],
                            "generated_tokens": lengths[:len(batch)].astype(np.int32), "perplexity": perplexity})
      atomic_files.write_parquet(os.path.join(shard_dir, f"part-{int(shard['row_id'].min()):07d}.parquet"), shard)
      state["done"] = pd.concat([state["done"], shard], ignore_index=True)
      state["finished"] += len(batch)
      if progress is not None:
        progress(state["finished"], len(rows))

  methods = rows["method"].to_numpy()
  vector_rows = todo[~np.isin(methods[todo], list(steerers))]
  if len(vector_rows):
    run_group(vector_rows, _vector_run(model.config, layer, protocol, sampling, stops, pad_id, tok, vectors,
                                       strengths, put), encoded)
  for name, steerer in steerers.items():
    mine = todo[methods[todo] == name]
    inputs = encoded
    if steerer.inputs is not None and len(mine):
      texts = dict(zip(mine, steerer.inputs(rows.iloc[mine])))
      inputs = {i: tok(texts[i]).input_ids for i in mine}
    concepts = rows["concept_id"].to_numpy()[mine]
    for concept in (np.unique(concepts) if steerer.per_concept else [None] if len(mine) else []):
      group = mine if concept is None else mine[concepts == concept]
      run_group(group, steerer.start(None if concept is None else int(concept)), inputs)
  return _ordered(state["done"], rows)


def _vector_run(config, layer: int, protocol: SteeringProtocol, sampling: SamplingConfig, stops, pad_id: int, tok,
                vectors: np.ndarray, strengths: np.ndarray, put) -> Run:
  """Rows that add (or clamp) their own vector at `layer` with their own strength."""
  intervention = (steering if protocol.intervention == "addition" else clamping)(layer)
  skip = prefix_length(tok) if protocol.intervention == "clamping" else 0  # AxBench's clamping keeps the prefix

  def run(params, ids, mask, keys, batch):
    index = batch.index.to_numpy()
    vector, strength = put(vectors[index], strengths[index])
    steer_mask = mask & (jnp.cumsum(mask, axis=1) > skip)
    return generate_tokens(params, config, ids, mask, keys, sampling, stops, pad_id, intervention,
                           steering_params(vector, strength), steer_mask)

  return run


def _ordered(done: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
  """The finished rows of `rows`, in row order."""
  return rows[["row_id"]].merge(done, on="row_id", how="left", validate="one_to_one").astype(COLUMNS)
