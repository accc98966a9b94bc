"""One pass of the frozen model up to layer L: the residual stream of every example, kept on the host."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax.model.config import GemmaConfig
from axjax.model.transformer import embed, frame_from_mask, layer_slice, run_layers


@functools.partial(jax.jit, static_argnums=(1, 4))
def _residual(params, config: GemmaConfig, tokens, mask, layer: int):
  x = embed(params, config, tokens)
  x, _, _ = run_layers(layer_slice(params, 0, layer + 1), config, x, frame_from_mask(mask), 0)
  return x


def layer_activations(params, config: GemmaConfig, tokens: np.ndarray, mask: np.ndarray, layer: int,
                      batch_size: int = 16, width_multiple: int = 64, progress=None) -> np.ndarray:
  """Residual stream after `layer` for tokens [N, T] (right-padded; mask [N, T]) as [N, T, d] in the model's
  dtype (bfloat16 halves the host memory; every consumer computes its statistics and scores in float32).

  Rows run in order of length, each batch only as wide as its longest row plus one pad (rounded up to
  `width_multiple`), so padding costs little and a handful of shapes compile. The state of the first pad after
  each row is kept (AxBench's ReFT-r1 reads it); positions past a batch's width are zero.
  `progress`, if given, is called with the number of rows done after each batch.
  """
  config.check_layer(layer)
  chex.assert_rank([tokens, mask], 2)
  chex.assert_equal_shape([tokens, mask])
  n, t = tokens.shape
  lengths = mask.sum(axis=1)
  order = np.argsort(lengths, kind="stable")
  out = np.zeros((n, t, config.hidden_size), params["embed"].dtype)
  for start in range(0, n, batch_size):
    rows = order[np.arange(start, start + batch_size).clip(max=n - 1)]  # last batch padded with copies
    width = min(t, -(-(int(lengths[rows].max()) + 1) // width_multiple) * width_multiple)
    acts = _residual(params, config, jnp.asarray(tokens[rows, :width]), jnp.asarray(mask[rows, :width]), layer)
    real = min(batch_size, n - start)
    out[rows[:real], :width] = np.asarray(acts)[:real]
    if progress is not None:
      progress(start + real)
  return out
