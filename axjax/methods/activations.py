"""One pass of the frozen model up to layer L: the residual stream of every example, kept on the host."""

from __future__ import annotations

from typing import Iterator, Sequence

import chex
import jax
import numpy as np

from axjax import processes, sharding
from axjax.model.config import GemmaConfig
from axjax.model.transformer import embed, frame_from_mask, layer_slice, run_layers


def residual_stream(params, config: GemmaConfig, tokens, mask, layer: int):
  """The residual stream [B, T, d] after decoder layer `layer` (traceable: callers jit it with what follows)."""
  x = embed(params, config, tokens)
  x, _, _ = run_layers(layer_slice(params, 0, layer + 1), config, x, frame_from_mask(mask), 0)
  return x


residual = jax.jit(residual_stream, static_argnums=(1, 4))  # compiled once per shape
WIDTH_MULTIPLE = 8  # batch widths are multiples of at least this (`bucket_width`)


def bucket_width(width: int, t: int, multiple: int) -> int:
  """`width` rounded up to its quarter-octave bucket, a multiple of max(`multiple`, 2^(bits of width - 3)), at
  most t: under 25% padding (a fixed multiple of 64 pads a 40-token batch by 60%) and four shapes to compile
  per doubling of the width."""
  step = max(multiple, 1 << max(width.bit_length() - 3, 0))
  return min(t, -(-width // step) * step)


def activation_batches(lengths: np.ndarray, t: int, batch_size: int,
                       width_multiple: int) -> list[tuple[np.ndarray, int]]:
  """(rows, width) of every batch: rows in order of length, each batch as wide as its longest row plus one pad
  in its `bucket_width` (at most t). The one partial batch holds the shortest rows, filled up with copies of the
  shortest, where filler costs least."""
  n = len(lengths)
  order = np.argsort(lengths, kind="stable")
  out = []
  for stop in range(n % batch_size or batch_size, n + 1, batch_size):
    rows = order[np.arange(stop - batch_size, stop).clip(min=0)]
    out.append((rows, bucket_width(int(lengths[rows].max()) + 1, t, width_multiple)))
  return out


def placed_batches(arrays: Sequence[np.ndarray], mask: np.ndarray, batch_size: int, width_multiple: int,
                   mesh: jax.sharding.Mesh | None, progress=None) -> Iterator[tuple[np.ndarray, tuple]]:
  """For every batch of `activation_batches` (rows of mask [N, T]): its rows and `arrays` [N, T] cut to those
  rows and the batch's width, on the device (with a mesh: the batch rounded up to a multiple of its concept
  axis and split over it). `progress`, if given, gets the number of distinct rows done after each batch."""
  batch_size, put = sharding.batch_placement(mesh, batch_size)
  done = 0
  for rows, width in activation_batches(mask.sum(axis=1), mask.shape[1], batch_size, width_multiple):
    yield rows, put(*(a[rows, :width] for a in arrays))
    done += len(np.unique(rows))
    if progress is not None:
      progress(done)


def layer_activations(params, config: GemmaConfig, tokens: np.ndarray, mask: np.ndarray, layer: int,
                      batch_size: int = 16, width_multiple: int = WIDTH_MULTIPLE, progress=None,
                      mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """Residual stream after `layer` for tokens [N, T] (right-padded; mask [N, T]) as [N, T, d] in the model's
  dtype (bfloat16 halves the host memory; every consumer computes its statistics and scores in float32).

  Batches follow `activation_batches`, so padding costs little and a handful of shapes compile. The state of
  the first pad after each row is kept (AxBench's ReFT-r1 reads it); positions past a batch's width are zero.
  `progress`, if given, is called with the number of rows done after each batch. With a `mesh`, each batch's
  rows are split over its concept axis (the batch rounded up to a multiple of it).
  """
  config.check_layer(layer)
  chex.assert_rank([tokens, mask], 2)
  chex.assert_equal_shape([tokens, mask])
  out = np.zeros((*tokens.shape, config.hidden_size), params["embed"].dtype)
  for rows, placed in placed_batches([tokens, mask], mask, batch_size, width_multiple, mesh, progress):
    acts = processes.to_host(residual(params, config, *placed, layer))
    out[rows, :acts.shape[1]] = acts  # a partial batch's copies write their row's values again
  return out
