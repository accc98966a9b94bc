"""GemmaScope JumpReLU sparse autoencoders for AxBench's SAE methods (its `sae.py`; reference section 2.1).

An SAE read from GemmaScope's `params.npz` (or a `.safetensors` file with the same keys) encodes residual
activations h [.., d] into F features `1[z > threshold] * ReLU(z)`, z = h @ W_enc + b_enc; feature i's
activation is AxBench's GemmaScopeSAE detection score. The selection variants pick one feature per concept from
its binarized training examples, scoring all F features in one streamed pass: MaxDiff (largest difference of the
class means of token-averaged activations), MaxAUC ("SAE-A": best train ROC AUC of per-example max activations)
and SAE DiffMean (that difference of means mapped through W_dec). Steering adds W_dec[i] (`steering_vector`
with `interventions.steering`) or clamps feature i through the SAE (`sae_clamping`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zipfile
from typing import Any, Iterable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax import processes
from axjax.errors import AxjaxError
from axjax.loading import safetensors_file
from axjax.methods import closed_form
from axjax.model.interventions import Intervention, InterventionContext

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
_KEYS = ("W_enc", "b_enc", "threshold", "W_dec", "b_dec")
_FOLDER_FILES = ("params.npz", "sae_weights.safetensors")  # GemmaScope's and SAELens' file names
_SIDECARS = ("sae.json", "cfg.json")  # JSON next to the file whose "model_name" names the model trained on
_MAX_AUC_EXAMPLES = 46340  # twice a rank sum stays below 2**31 (int32 on the device)


@dataclasses.dataclass(frozen=True)
class Sae:
  """A JumpReLU SAE with F features over a d-wide residual stream (float32 jax arrays)."""

  w_enc: Array  # [d, F]
  b_enc: Array  # [F]
  threshold: Array  # [F]
  w_dec: Array  # [F, d]
  b_dec: Array  # [d]
  source: str  # the file it was read from
  model_name: str | None  # the model it was trained for, where the file or a sidecar names one

  @property
  def width(self) -> int:
    """d, the residual width it encodes."""
    return self.w_enc.shape[0]

  @property
  def num_features(self) -> int:
    """F, its number of features."""
    return self.w_enc.shape[1]


def load_sae(path: str, hidden_size: int, *, model_name: str | None = None) -> Sae:
  """Reads a GemmaScope SAE (a params.npz or .safetensors file, or a folder holding one) and checks that it fits
  the model: all five arrays, consistent shapes, width equal to `hidden_size`, and trained for `model_name`."""
  path = _sae_file(path)
  if path.endswith(".npz"):
    arrays, trained_for = _read_npz(path), None
  else:
    arrays, trained_for = _read_safetensors(path)
  trained_for = trained_for or _sidecar_model_name(path)
  missing = [k for k in _KEYS if k not in arrays]
  if missing:
    raise AxjaxError(f"the SAE at {path} lacks {', '.join(missing)} (a GemmaScope SAE has {', '.join(_KEYS)})")
  w_enc = arrays["W_enc"]
  d, f = w_enc.shape if w_enc.ndim == 2 else (-1, -1)
  expected = {"W_enc": (d, f), "b_enc": (f,), "threshold": (f,), "W_dec": (f, d), "b_dec": (d,)}
  if w_enc.ndim != 2 or any(arrays[k].shape != s for k, s in expected.items()):
    shapes = ", ".join(f"{k} {list(arrays[k].shape)}" for k in _KEYS)
    raise AxjaxError(f"the SAE at {path} has inconsistent shapes {shapes} "
                     "(expected W_enc [d, F], b_enc [F], threshold [F], W_dec [F, d], b_dec [d])")
  if d != hidden_size:
    raise AxjaxError(f"the SAE at {path} has width {d} but the model's hidden size is {hidden_size}")
  if model_name and trained_for and model_key(model_name) != model_key(trained_for):
    raise AxjaxError(f"the SAE at {path} was trained for {trained_for}, not for {model_name}")
  return Sae(*(jnp.asarray(arrays[k], jnp.float32) for k in _KEYS), source=path, model_name=trained_for)


def _sae_file(path: str) -> str:
  """The SAE file `path` names (a folder: its params.npz or sae_weights.safetensors)."""
  if os.path.isdir(path):
    for name in _FOLDER_FILES:
      if os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name)
    raise AxjaxError(f"the folder {path} holds no SAE file ({' or '.join(_FOLDER_FILES)})")
  if not os.path.isfile(path):
    raise AxjaxError(f"no SAE file at {path}")
  if not path.endswith((".npz", ".safetensors")):
    raise AxjaxError(f"{path} is not an SAE file: expected GemmaScope's params.npz or a .safetensors file")
  return path


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """The SAE arrays present in an .npz file."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in _KEYS if k in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise AxjaxError(f"{path} is not a readable .npz file ({e})") from None


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], str | None]:
  """The SAE arrays present in a .safetensors file, and the model its metadata names (if any)."""
  entries = safetensors_file.read_header(path)  # raises CheckpointError on a malformed or truncated file
  arrays = {k: safetensors_file.read_tensor(entries[k]) for k in _KEYS if k in entries}
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    metadata = json.loads(f.read(header_len)).get("__metadata__") or {}
  return arrays, metadata.get("model_name")


def _sidecar_model_name(path: str) -> str | None:
  """The "model_name" of the first sidecar JSON (sae.json, cfg.json) next to `path`."""
  for name in _SIDECARS:
    sidecar = os.path.join(os.path.dirname(path), name)
    if os.path.isfile(sidecar):
      try:
        with open(sidecar) as f:
          meta = json.load(f)
      except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AxjaxError(f"the SAE metadata {sidecar} is not valid JSON ({e})") from None
      return meta.get("model_name") if isinstance(meta, dict) else None
  return None


def model_key(name: str) -> str:
  """A model name compared without its owner, folder or "-it": "google/gemma-2-9b-it" and "gemma-2-9b" match
  (GemmaScope's SAEs of the base model serve its instruction-tuned variant, as in AxBench's 9B runs)."""
  key = name.rstrip("/").rsplit("/", 1)[-1].lower()
  return key[:-3] if key.endswith("-it") else key


@jax.jit
def _jump_relu(h: Array, w_enc: Array, b_enc: Array, threshold: Array) -> Array:
  """JumpReLU activations [..., F] of h [..., d], in full float32 precision (the threshold test is sharp)."""
  z = jnp.einsum("...d,df->...f", h.astype(jnp.float32), w_enc, precision=_HIGHEST) + b_enc
  return jnp.where(z > threshold, jax.nn.relu(z), 0.0)


def encode(sae: Sae, h: Any) -> Array:
  """Feature activations [..., F] of residual activations h [..., d]: AxBench's SAE detection scores."""
  h = jnp.asarray(h)
  chex.assert_axis_dimension(h, -1, sae.width)
  return _jump_relu(h, sae.w_enc, sae.b_enc, sae.threshold)


def _feature_index(sae: Sae, features: Any) -> Array:
  """`features` (an int or a 1-D list of ints) as an int32 index, refused if out of range."""
  idx = np.asarray(features)
  chex.assert_rank(idx, {0, 1})
  if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= sae.num_features):
    raise AxjaxError(f"SAE features must be integers in [0, {sae.num_features}), got {idx.tolist()}")
  return jnp.asarray(idx, jnp.int32)


def prune(sae: Sae, features: Any) -> Sae:
  """The SAE cut to `features`, in order (AxBench's `save_pruned_sae`: one feature per concept, so `encode`
  gives each concept's detection score)."""
  idx = jnp.atleast_1d(_feature_index(sae, features))
  return dataclasses.replace(sae, w_enc=sae.w_enc[:, idx], b_enc=sae.b_enc[idx], threshold=sae.threshold[idx],
                             w_dec=sae.w_dec[idx])


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Per-feature statistics of C concepts' training examples (N examples in all), gathered in one pass."""

  mean_sums: np.ndarray  # [C, 2, F] float64: sums over negative (0) / positive (1) examples of token-mean activations
  counts: np.ndarray  # [C, 2] examples of each class
  example_max: np.ndarray  # [N, F] float32: each example's max activation over its scored tokens
  labels: np.ndarray  # [N, C] int8: 1 positive, 0 negative, -1 not an example of that concept


@jax.jit
def _example_features(acts: Array, mask: Array, w_enc: Array, b_enc: Array, threshold: Array) -> tuple[Array, Array]:
  """Each example's token-mean and max activation [B, F] over its masked tokens (0 where it has none)."""
  b, t, d = acts.shape
  a = _jump_relu(acts.reshape(b * t, d), w_enc, b_enc, threshold).reshape(b, t, -1)
  m = mask.astype(jnp.float32)
  mean = jnp.einsum("bt,btf->bf", m, a, precision=_HIGHEST) / jnp.maximum(m.sum(-1), 1.0)[:, None]
  return mean, jnp.max(jnp.where(mask[..., None], a, 0.0), axis=1)


def feature_stats(sae: Sae, batches: Iterable[tuple[Any, Any, Any]]) -> FeatureStats:
  """Statistics of all F features over `batches` of (acts [B, T, d], token mask [B, T], labels [B] or [B, C]).

  Labels are 1 (positive) or 0 (negative); with a concept axis, -1 marks a row that is not one of that concept's
  examples, so concepts sharing negatives are encoded once. Each batch is one [B*T, d] x [d, F] product.
  """
  sums, counts, maxes, all_labels = 0.0, 0.0, [], []
  for acts, mask, labels in batches:
    acts, mask = jnp.asarray(acts), jnp.asarray(mask, bool)
    labels = np.asarray(labels)
    chex.assert_rank([acts, mask, labels], [3, 2, {1, 2}])
    chex.assert_equal_shape_prefix([acts, mask], 2)
    chex.assert_axis_dimension(acts, 2, sae.width)
    chex.assert_axis_dimension(labels, 0, acts.shape[0])
    labels = labels.reshape(labels.shape[0], -1)
    if not np.isin(labels, (-1, 0, 1)).all():
      raise AxjaxError(f"labels must be 1 (positive), 0 (negative) or -1 (not that concept's example), got "
                       f"{np.setdiff1d(labels, (-1, 0, 1)).tolist()}")
    if all_labels:
      chex.assert_axis_dimension(labels, 1, all_labels[0].shape[1])
    mean, top = (processes.to_host(x) for x in _example_features(acts, mask, sae.w_enc, sae.b_enc, sae.threshold))
    classes = np.stack([labels == 0, labels == 1], axis=-1).astype(np.float64)  # [B, C, 2]
    sums = sums + np.einsum("bcp,bf->cpf", classes, mean.astype(np.float64))
    counts = counts + classes.sum(0)
    maxes.append(top.astype(np.float32))
    all_labels.append(labels.astype(np.int8))
  if not maxes:
    raise AxjaxError("no training examples were given for SAE feature selection")
  return FeatureStats(sums, counts, np.concatenate(maxes), np.concatenate(all_labels))


def _check_classes(stats: FeatureStats) -> None:
  """Refuses concepts without both positive and negative examples (no difference of means, no AUC)."""
  lacking = np.flatnonzero((stats.counts == 0).any(-1))
  if lacking.size:
    raise AxjaxError(f"concepts {lacking.tolist()} need both positive and negative examples for SAE feature "
                     "selection")


def mean_difference(stats: FeatureStats) -> np.ndarray:
  """[C, F]: mean over positive minus mean over negative examples of each feature's token-mean activation."""
  _check_classes(stats)
  means = stats.mean_sums / stats.counts[..., None]
  return means[:, 1] - means[:, 0]


@jax.jit
def _auc(x: Array, y: Array) -> Array:
  """ROC AUC [F] of each column of x [n, F] for labels y [n] in {0, 1}: the Mann-Whitney U of average ranks
  (ties share their mean rank, as in scikit-learn's roc_auc_score), summed exactly in int32."""
  n = x.shape[0]
  order = jnp.argsort(x, axis=0)
  s = jnp.take_along_axis(x, order, axis=0)
  i = jnp.arange(n, dtype=jnp.int32)[:, None]
  differs = s[1:] != s[:-1]
  edge = jnp.ones_like(s[:1], bool)
  first = jax.lax.cummax(jnp.where(jnp.concatenate([edge, differs]), i, 0), axis=0)  # start of each tie group
  last = jax.lax.cummin(jnp.where(jnp.concatenate([differs, edge]), i, n - 1), axis=0, reverse=True)
  twice_rank_sum = jnp.sum((first + last + 2) * y[order], axis=0)  # twice the 1-based average ranks of positives
  p = jnp.sum(y)
  return (twice_rank_sum - p * (p + 1)) / (2.0 * p * (n - p))


def feature_auc(stats: FeatureStats) -> np.ndarray:
  """[C, F]: each feature's train-set ROC AUC, per concept, of the per-example max activation."""
  _check_classes(stats)
  out = []
  for c in range(stats.labels.shape[1]):
    rows = stats.labels[:, c] >= 0
    if rows.sum() > _MAX_AUC_EXAMPLES:
      raise AxjaxError(f"concept {c} has {rows.sum()} examples; SAE AUC selection takes at most {_MAX_AUC_EXAMPLES}")
    y = jnp.asarray(stats.labels[rows, c], jnp.int32)
    out.append(processes.to_host(_auc(jnp.asarray(stats.example_max[rows]), y)))
  return np.stack(out)


def max_diff_feature(stats: FeatureStats) -> np.ndarray:
  """[C] AxBench's GemmaScopeSAEMaxDiff: per concept, the feature with the largest `mean_difference`."""
  return np.argmax(mean_difference(stats), axis=-1)


def max_auc_feature(stats: FeatureStats) -> np.ndarray:
  """[C] AxBench's GemmaScopeSAEMaxAUC ("SAE-A"): per concept, the feature with the best `feature_auc`."""
  return np.argmax(feature_auc(stats), axis=-1)


def sae_diffmean_direction(sae: Sae, stats: FeatureStats) -> np.ndarray:
  """[C, d] AxBench's GemmaScopeSAEDiffMean: `mean_difference` @ W_dec, scaled to unit norm."""
  diff = jnp.asarray(mean_difference(stats), jnp.float32)
  return np.asarray(closed_form.unit_norm(jnp.einsum("cf,fd->cd", diff, sae.w_dec, precision=_HIGHEST)))


def steering_vector(sae: Sae, features: Any) -> Array:
  """W_dec rows [d] (or [B, d] for a list of features): AxBench's SAE addition `h + mag * max_act * W_dec[i]`,
  applied with `interventions.steering` and factor mag * max_act."""
  return sae.w_dec[_feature_index(sae, features)]


def _set_feature(params: dict[str, Array], h: Array, ctx: InterventionContext, at_least: bool) -> Array:
  """h with feature i's activation a_i replaced: AxBench's dec(a') + (h - dec(a)) equals h + (a'_i - a_i) W_dec[i]
  because the decoder is linear and only feature i changes, so only feature i is encoded."""
  enc, dec, factor = params["encoder"], params["vector"], params["factor"]
  chex.assert_rank(factor, {0, 1})
  rows = dec.ndim == 2  # one feature per batch row: [B, d] vectors, [B] scalars
  per_row = (lambda x: x[:, None]) if rows else (lambda x: x)
  hf = h.astype(jnp.float32)
  z = jnp.sum(hf * per_row(enc), axis=-1) + per_row(params["bias"])  # [B, T]
  a = jnp.where(z > per_row(params["threshold"]), jax.nn.relu(z), 0.0)
  target = per_row(factor)
  new = jnp.maximum(a, target) if at_least else target
  out = hf + (new - a)[..., None] * per_row(dec)
  return jnp.where(ctx.mask[..., None], out, hf).astype(h.dtype)


def _clamp_feature(params: dict[str, Array], h: Array, ctx: InterventionContext) -> Array:
  """SAE clamping (a module-level function, so the static Intervention hashes the same every time)."""
  return _set_feature(params, h, ctx, at_least=False)


def _min_clamp_feature(params: dict[str, Array], h: Array, ctx: InterventionContext) -> Array:
  """SAE min-clamping."""
  return _set_feature(params, h, ctx, at_least=True)


def sae_clamping(layer: int, *, minimum: bool = False) -> Intervention:
  """AxBench's SAE clamping (feature i's activation set to the factor) or, with `minimum`, min-clamping (raised to
  at least the factor), keeping the SAE's reconstruction error. Params from `sae_clamping_params`."""
  if minimum:
    return Intervention(layer=layer, apply=_min_clamp_feature, name="sae_min_clamping")
  return Intervention(layer=layer, apply=_clamp_feature, name="sae_clamping")


def sae_clamping_params(sae: Sae, features: Any, factor: Any) -> dict[str, Array]:
  """Params for `sae_clamping`: feature i's encoder column, bias, threshold and decoder row, and the target
  activation factor (AxBench's mag * max_act); `features` an int, or [B] ints with factor [B] (one per row)."""
  idx = _feature_index(sae, features)
  factor = jnp.asarray(factor, jnp.float32)
  chex.assert_shape(factor, idx.shape)
  return {"encoder": sae.w_enc[:, idx].T, "bias": sae.b_enc[idx], "threshold": sae.threshold[idx],
          "vector": sae.w_dec[idx], "factor": factor}
