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
  return x.astype(jnp.float32)


def layer_activations(params, config: GemmaConfig, tokens: np.ndarray, mask: np.ndarray, layer: int,
                      batch_size: int = 16, progress=None) -> np.ndarray:
  """Residual stream after `layer` for tokens [N, T] (right-padded; mask [N, T]) as float32 [N, T, d].

  Batches have a fixed shape (the last one is padded with copies) so one compilation serves the whole pass.
  `progress`, if given, is called with the number of rows done after each batch.
  """
  config.check_layer(layer)
  chex.assert_rank([tokens, mask], 2)
  chex.assert_equal_shape([tokens, mask])
  n, t = tokens.shape
  out = np.empty((n, t, config.hidden_size), np.float32)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    rows = np.arange(start, start + batch_size).clip(max=n - 1)
    acts = _residual(params, config, jnp.asarray(tokens[rows]), jnp.asarray(mask[rows]), layer)
    out[start:stop] = np.asarray(acts)[:stop - start]
    if progress is not None:
      progress(stop)
  return out
