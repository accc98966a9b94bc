"""Fixed-shape minibatches over per-concept example sets, reshuffled every epoch like AxBench's DataLoader.

AxBench trains each concept with `DataLoader(shuffle=True, batch_size=B)` (drop_last=False): a new order every
epoch and a smaller last batch when B does not divide the example count. Here every step has shape [C, B]
so one compilation serves all steps; entries past a concept's last example carry weight False, and a loss
averaged over weighted entries equals AxBench's average over its smaller batch.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from axjax.errors import AxjaxError


@dataclasses.dataclass(frozen=True, eq=False)
class Minibatch:
  """One training step for all concepts at once."""

  epoch: int
  step: int  # 0-based over all epochs
  positions: np.ndarray  # [C, B] int32 positions along each concept's N axis (ConceptExamples.shared_rows maps them)
  weight: np.ndarray  # [C, B] bool: False on filler entries, which repeat a real example of the same concept


def steps_per_epoch(row_valid: np.ndarray, batch_size: int) -> int:
  """AxBench's len(DataLoader) for the concept with the most examples: ceil(examples / batch_size)."""
  if batch_size < 1:
    raise AxjaxError(f"batch_size must be at least 1, not {batch_size!r}")
  return max(1, -(-int(np.asarray(row_valid, bool).sum(axis=1).max()) // batch_size))


def minibatches(row_valid: np.ndarray, batch_size: int, epochs: int, seed: int,
                concept_ids: Sequence[int] | None = None) -> Iterator[Minibatch]:
  """Yields epochs * steps_per_epoch minibatches; each concept has its own order, reshuffled every epoch.

  A concept's order depends only on (seed, its concept id), so it does not change when concepts are built
  in chunks. A concept with fewer examples than the largest one gets all-False steps at its epoch's end,
  which a trainer should skip for that concept (AxBench would have no such step).
  """
  valid = np.asarray(row_valid, bool)
  if valid.ndim != 2:
    raise AxjaxError(f"row_valid must be a [concepts, examples] array, not one of shape {valid.shape}")
  if epochs < 0 or seed < 0:
    raise AxjaxError(f"epochs and seed must be non-negative, not epochs={epochs!r}, seed={seed!r}")
  ids = np.arange(valid.shape[0]) if concept_ids is None else np.asarray(concept_ids)
  if ids.shape != (valid.shape[0],):
    raise AxjaxError(f"concept_ids has {ids.size} entries for {valid.shape[0]} concepts in row_valid")
  steps = steps_per_epoch(valid, batch_size)
  rngs = [np.random.default_rng([seed, int(c)]) for c in ids]
  for epoch in range(epochs):
    positions = np.zeros((valid.shape[0], steps * batch_size), np.int32)
    weight = np.zeros(positions.shape, bool)
    for c, rng in enumerate(rngs):
      order = rng.permutation(np.flatnonzero(valid[c]))
      positions[c, :order.size] = order
      positions[c, order.size:] = order[0] if order.size else 0
      weight[c, :order.size] = True
    for s in range(steps):
      cols = slice(s * batch_size, (s + 1) * batch_size)
      yield Minibatch(epoch, epoch * steps + s, positions[:, cols], weight[:, cols])


def packed_loss_positions(loss_mask: np.ndarray, rows: np.ndarray, weight: np.ndarray,
                          width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """For one step, each concept's positions whose logits predict an output token, packed: [C, width] int32
  flat indices b * T + t - 1 into its [B, T] batch (t an output token of weighted row b), and [C, width]
  float32 validity. Only real output tokens reach the 262k-way output layer, not each row's padding.

  loss_mask [U, T] marks output tokens; rows/weight [C, B] are the step's rows and weights; width defaults to
  the largest count in this step (`packed_width` gives one width for every step, so one compilation serves).
  """
  t = loss_mask.shape[1]
  per_concept = [np.concatenate([b * t + np.flatnonzero(loss_mask[r]) - 1
                                 for b, (r, w) in enumerate(zip(row, wt)) if w] or [np.zeros(0, np.int64)])
                 for row, wt in zip(rows, weight)]
  width = max(1, max(len(p) for p in per_concept)) if width is None else width
  index = np.zeros((len(per_concept), width), np.int32)
  valid = np.zeros((len(per_concept), width), np.float32)
  for c, p in enumerate(per_concept):
    if len(p) > width:
      raise AxjaxError(f"a step has {len(p)} output tokens for one concept, more than the packed width {width}")
    index[c, :len(p)], valid[c, :len(p)] = p, 1.0
  return index, valid


def packed_width(loss_mask: np.ndarray, steps) -> int:
  """The most output tokens any concept has in any step of `steps` ((rows, weight) [C, B] pairs)."""
  counts = loss_mask.sum(axis=1)
  return max(1, max(int((counts[rows] * weight).sum(axis=1).max()) for rows, weight in steps))


def pooled_rows(valid_per_step, size: int, groups: int) -> int:
  """The most real output positions any group of concepts has in any step (objectives.UpperModel pools
  them): `valid_per_step` holds each step's [C, width] validity, the concepts padded to `size` with filler
  concepts that have none and split into `groups` equal, consecutive groups."""
  most = 1
  for valid in valid_per_step:
    counts = np.zeros(size)
    counts[:len(valid)] = np.asarray(valid).sum(axis=1)
    most = max(most, int(counts.reshape(groups, -1).sum(axis=1).max()))
  return most
