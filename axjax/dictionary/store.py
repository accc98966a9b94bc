"""Concept dictionaries: what one method learned for C concepts, saved and loaded with Orbax.

Rank-1 methods hold [C, d] vectors (`weights`); every method may add its own arrays with a leading concept axis
(`extras`: an SAE feature's decoder row, LoReFT's and LoRA's adapters, BoW's classifiers, a steering prompt as
UTF-8 bytes), and methods without a direction (LoReFT, LoRA, BoW, prompting) hold extras only.
Loading needs only numpy and orbax-checkpoint, never the model or training code, so a dictionary opens
in a bare Colab. On disk a dictionary is an Orbax composite checkpoint with two items:
`arrays` (weights [C, d] where the method has them; biases, max_activations, thresholds: float32; extras)
and `metadata` (JSON).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import numbers
import os
import shutil
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import orbax.checkpoint as ocp

from axjax import atomic_files, processes
from axjax.errors import AxjaxError

if TYPE_CHECKING:
  from axjax.model.config import GemmaConfig

FORMAT = "axjax.dictionary"  # marks the metadata item, so no other checkpoint passes for a dictionary
FORMAT_VERSION = 3  # 2: the `extras` arrays (a version-1 dictionary has none); 3: weights may be absent
_VECTORS = ("biases", "max_activations", "thresholds")


class DictionaryError(AxjaxError):
  """A dictionary that is malformed, missing, or does not fit the model or layer it is used with."""


def _vector(name: str, value: Any, size: int) -> np.ndarray:
  """`value` as a read-only float32 [size] array."""
  array = np.array(value, dtype=np.float32)
  if array.shape != (size,):
    raise DictionaryError(f"{name} has shape {array.shape} but the dictionary has {size} concepts")
  array.setflags(write=False)
  return array


def _or_unknown(value: Any, size: int) -> Any:
  """`value`, or all NaN (unknown) when it is None."""
  return np.full(size, np.nan) if value is None else value


def _json_copy(name: str, value: Any) -> Any:
  """A JSON round trip of `value`, so what is saved equals what is loaded (tuples become lists)."""
  try:
    return json.loads(json.dumps(value, allow_nan=False))
  except (TypeError, ValueError) as e:
    raise DictionaryError(f"{name} must be JSON-serialisable without NaN or infinity ({e})") from None


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True, eq=False)
class Dictionary:
  """What one method learned for C concepts at one layer of one model (of width d), with its metadata.

  Arrays are read-only (weights and the vectors float32); `replace` returns a checked copy (e.g. with
  max_activations and thresholds filled in after a detection run). NaN in max_activations or thresholds means
  unknown. A method without a direction has `weights=None` and names the model width in `width`.
  """

  weights: np.ndarray | None  # [C, d] rank-1 directions, or None
  biases: np.ndarray | None  # [C]; None: zeros
  concept_ids: tuple[int, ...]
  concept_names: tuple[str, ...]
  method: str
  model_name: str
  layer: int
  hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
  max_activations: np.ndarray | None = None  # [C]; None means all unknown
  thresholds: np.ndarray | None = None  # [C]; None means all unknown
  extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # a method's own arrays [C, ...]
  format_version: int = FORMAT_VERSION
  width: int | None = None  # the model width d; taken from weights when there are any

  def __post_init__(self):
    ids, names = tuple(self.concept_ids), tuple(self.concept_names)
    weights, width = self.weights, self.width
    if weights is not None:
      weights = np.array(weights, dtype=np.float32)
      if weights.ndim != 2 or weights.shape[0] == 0 or weights.shape[1] == 0:
        raise DictionaryError(f"weights must have shape [C, d] with C, d > 0, not {weights.shape}")
      if not np.isfinite(weights).all():
        raise DictionaryError("weights contain NaN or infinite values")
      if width is not None and width != weights.shape[1]:
        raise DictionaryError(f"width {width} differs from the weights' width {weights.shape[1]}")
      weights.setflags(write=False)
      width = weights.shape[1]
    elif not _is_int(width) or width <= 0 or not ids:
      raise DictionaryError("a dictionary without weights needs a positive model width and at least one concept")
    size = len(ids) if weights is None else weights.shape[0]
    if not all(_is_int(i) for i in ids):
      raise DictionaryError("concept_ids must be integers")
    ids = tuple(int(i) for i in ids)
    if not all(isinstance(n, str) for n in names):
      raise DictionaryError("concept_names must be strings")
    if len(ids) != size or len(names) != size:
      raise DictionaryError(f"the dictionary has {size} concepts but {len(ids)} concept ids and "
                            f"{len(names)} concept names")
    if len(set(ids)) != size:
      duplicate = collections.Counter(ids).most_common(1)[0][0]
      raise DictionaryError(f"concept ids must be unique but {duplicate} appears more than once")
    for name in ("method", "model_name"):
      if not isinstance(getattr(self, name), str) or not getattr(self, name):
        raise DictionaryError(f"{name} must be a non-empty string, not {getattr(self, name)!r}")
    if not _is_int(self.layer) or self.layer < 0:
      raise DictionaryError(f"layer must be a non-negative integer, not {self.layer!r}")
    if not _is_int(self.format_version) or not 1 <= self.format_version <= FORMAT_VERSION:
      raise DictionaryError(f"format_version {self.format_version!r} is not one this axjax knows "
                            f"(1..{FORMAT_VERSION})")
    if not isinstance(self.hyperparameters, dict):
      raise DictionaryError(f"hyperparameters must be a dict, not {type(self.hyperparameters).__name__}")
    biases = _vector("biases", np.zeros(size) if self.biases is None else self.biases, size)
    if not np.isfinite(biases).all():
      raise DictionaryError("biases contain NaN or infinite values")
    fields = dict(weights=weights, width=int(width), biases=biases, concept_ids=ids, concept_names=names,
                  layer=int(self.layer),
                  hyperparameters=_json_copy("hyperparameters", self.hyperparameters),
                  max_activations=_vector("max_activations", _or_unknown(self.max_activations, size), size),
                  thresholds=_vector("thresholds", _or_unknown(self.thresholds, size), size),
                  extras=_extras(self.extras, size))
    for name, value in fields.items():
      object.__setattr__(self, name, value)

  @property
  def num_concepts(self) -> int:
    return len(self.concept_ids)

  @property
  def hidden_size(self) -> int:
    """The model width d the dictionary was trained for."""
    return self.width

  def index_of(self, concept_id: int) -> int:
    """The row of `concept_id`."""
    try:
      return self.concept_ids.index(concept_id)
    except ValueError:
      raise DictionaryError(f"concept id {concept_id!r} is not in this dictionary") from None

  def rows_of(self, concept_ids: Iterable[int], missing: int | None = None) -> np.ndarray:
    """int64 [N]: the row of each concept id; `missing` where an id is not here (None: refuse it)."""
    rows = {cid: row for row, cid in enumerate(self.concept_ids)}
    ids = [int(c) for c in concept_ids]
    if missing is None and (absent := [c for c in ids if c not in rows]):
      self.index_of(absent[0])  # refuses it in index_of's sentence
    return np.array([rows.get(c, missing) for c in ids], np.int64)

  def replace(self, **changes) -> Dictionary:
    """A copy with `changes` applied and checked again."""
    return dataclasses.replace(self, **changes)

  def select(self, concept_ids: Iterable[int]) -> Dictionary:
    """The sub-dictionary of `concept_ids`, rows in the order given."""
    concept_ids = list(concept_ids)
    rows = {cid: row for row, cid in enumerate(self.concept_ids)}
    missing = [cid for cid in concept_ids if cid not in rows]
    if missing:
      raise DictionaryError(f"concept id {missing[0]!r} is not in this dictionary")
    index = np.array([rows[cid] for cid in concept_ids], dtype=np.int64)
    return self.replace(weights=None if self.weights is None else self.weights[index], biases=self.biases[index],
                        concept_ids=tuple(self.concept_ids[i] for i in index),
                        concept_names=tuple(self.concept_names[i] for i in index),
                        max_activations=self.max_activations[index], thresholds=self.thresholds[index],
                        extras={k: v[index] for k, v in self.extras.items()})

  def steering_vectors(self) -> np.ndarray:
    """[C, d] what steering adds: the `steering_vector` extra where a method has one (an SAE feature's decoder
    row, while its detection reads the encoder column), else the weights."""
    vectors = self.extras.get("steering_vector", self.weights)
    if vectors is None:
      raise DictionaryError(f"the {self.method} dictionary has no steering vectors (it is not a rank-1 method)")
    return vectors


def concatenate(parts: list[Dictionary]) -> Dictionary:
  """One dictionary of the concepts of `parts` (one method's chunks), in order, without max activations or
  thresholds; extras of differing trailing shapes (BoW vocabularies, prompt texts) are zero-padded to the widest."""
  first = parts[0]
  extras = {}
  for name in first.extras:
    arrays = [p.extras[name] for p in parts]
    wide = np.max([a.shape[1:] for a in arrays], axis=0) if arrays[0].ndim > 1 else ()
    extras[name] = np.concatenate([np.pad(a, [(0, 0)] + [(0, w - s) for w, s in zip(wide, a.shape[1:])])
                                   for a in arrays])
  return first.replace(weights=None if first.weights is None else np.concatenate([p.weights for p in parts]),
                       biases=np.concatenate([p.biases for p in parts]),
                       concept_ids=sum((p.concept_ids for p in parts), ()),
                       concept_names=sum((p.concept_names for p in parts), ()), max_activations=None,
                       thresholds=None, extras=extras)


def text_array(texts: Iterable[str]) -> np.ndarray:
  """uint8 [C, L]: each text's UTF-8 bytes, zero-padded (an extra that holds one string per concept)."""
  encoded = [t.encode("utf-8") for t in texts]
  out = np.zeros((len(encoded), max(1, *map(len, encoded)) if encoded else 1), np.uint8)
  for row, data in enumerate(encoded):
    out[row, :len(data)] = np.frombuffer(data, np.uint8)
  return out


def texts_of(array: np.ndarray) -> list[str]:
  """The strings `text_array` stored."""
  return [bytes(row).rstrip(b"\0").decode("utf-8") for row in np.asarray(array, np.uint8)]


def _extras(extras: Any, size: int) -> dict[str, np.ndarray]:
  """`extras` as read-only finite arrays, each with a leading axis of `size` concepts."""
  if not isinstance(extras, dict) or not all(isinstance(k, str) and k for k in extras):
    raise DictionaryError("extras must be a dict of named arrays")
  out = {}
  for name, value in sorted(extras.items()):
    array = np.array(value)
    if array.ndim == 0 or array.shape[0] != size:
      raise DictionaryError(f"extra {name!r} has shape {array.shape} but the dictionary has {size} concepts")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
      raise DictionaryError(f"extra {name!r} contains NaN or infinite values")
    array.setflags(write=False)
    out[name] = array
  return out


def _check_fit(where: str, width: int, trained_layer: int, trained_model: str, *, hidden_size: int | None,
               layer: int | None, model_name: str | None) -> None:
  """Raises if a dictionary of `width` trained at `trained_layer` of `trained_model` does not fit."""
  if hidden_size is not None and hidden_size != width:
    raise DictionaryError(f"{where} has width {width} but the model's hidden size is {hidden_size}")
  if layer is not None and layer != trained_layer:
    raise DictionaryError(f"{where} was trained for layer {trained_layer}, not layer {layer}")
  if model_name is not None and model_name != trained_model:
    raise DictionaryError(f"{where} was trained on model {trained_model!r}, not {model_name!r}")


def check_compatible(dictionary: Dictionary, config: GemmaConfig, layer: int) -> None:
  """Raises unless `dictionary` fits a model of `config` intervened on at `layer`."""
  _check_fit("the dictionary", dictionary.hidden_size, dictionary.layer, dictionary.model_name,
             hidden_size=config.hidden_size, layer=layer, model_name=None)
  config.check_layer(layer)


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _metadata(dictionary: Dictionary) -> dict[str, Any]:
  return {"format": FORMAT, "format_version": dictionary.format_version, "method": dictionary.method,
          "model_name": dictionary.model_name, "layer": dictionary.layer,
          "hidden_size": dictionary.hidden_size, "num_concepts": dictionary.num_concepts,
          "concept_ids": list(dictionary.concept_ids), "concept_names": list(dictionary.concept_names),
          "hyperparameters": dictionary.hyperparameters, "extras": sorted(dictionary.extras)}


def _saved_arrays(dictionary: Dictionary) -> dict[str, Any]:
  """The arrays item of a saved dictionary: the weights and extras where there are any, and the vectors."""
  arrays = {name: np.asarray(getattr(dictionary, name)) for name in _VECTORS}
  if dictionary.weights is not None:
    arrays["weights"] = np.asarray(dictionary.weights)
  return {**arrays, "extras": dict(dictionary.extras)} if dictionary.extras else arrays


def _raw_metadata(path: str) -> dict[str, Any] | None:
  """The metadata item at `path`, or None if `path` holds no axjax dictionary."""
  try:
    meta = _checkpointer().restore(path, ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
  except Exception:  # orbax raises many types for a folder that is not its checkpoint
    return None
  return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _read_metadata(path: str) -> dict[str, Any]:
  """The metadata item of the dictionary at `path`, checked for format and version."""
  if not os.path.exists(path):
    raise DictionaryError(f"no dictionary at {path}: the path does not exist")
  meta = _raw_metadata(path)
  if meta is None:
    raise DictionaryError(f"{path} is not an axjax dictionary (it has no dictionary metadata)")
  if meta.get("format_version", 0) > FORMAT_VERSION:
    raise DictionaryError(f"dictionary {path} has format version {meta['format_version']}, newer than the "
                          f"version {FORMAT_VERSION} this axjax reads: upgrade axjax")
  return meta


def save_dictionary(path: str | os.PathLike, dictionary: Dictionary, overwrite: bool = False) -> None:
  """Writes `dictionary` to the folder `path` atomically: a failed save leaves `path` as it was.

  Orbax writes into a hidden staging folder beside `path` (itself via a tmp dir and a rename); the
  finished checkpoint then replaces `path` by rename only, so `path` never holds a partial dictionary. With
  several processes every one calls this; process 0 moves the folders.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.lexists(path):
    if not overwrite:
      raise DictionaryError(f"{path} already exists: pass overwrite=True to replace it")
    if _raw_metadata(path) is None:  # never replace (and so delete) anything but a dictionary
      raise DictionaryError(f"{path} exists and is not an axjax dictionary: refusing to replace it")
  staging = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{processes.shared_token()}.axjax-tmp")
  processes.on_writer(os.makedirs, staging)
  try:
    new, old = os.path.join(staging, "new"), os.path.join(staging, "old")
    _checkpointer().save(new, ocp.args.Composite(arrays=ocp.args.StandardSave(_saved_arrays(dictionary)),
                                                 metadata=ocp.args.JsonSave(_metadata(dictionary))))
    processes.on_writer(_commit, new, path, old)
  finally:
    processes.on_writer(shutil.rmtree, staging, ignore_errors=True)


def _commit(new: str, path: str, old: str) -> None:
  """Moves the finished checkpoint `new` to `path`, parking a previous dictionary at `old` until it is in."""
  if not os.path.lexists(path):
    os.rename(new, path)
    return
  os.rename(path, old)
  try:
    os.rename(new, path)
  except BaseException:
    os.rename(old, path)
    raise


def save_dictionary_npz(path: str, dictionary: Dictionary) -> None:
  """`dictionary` as one .npz file (arrays and metadata), written atomically by this process alone: the scratch
  form of one concept chunk's results, which a process working on its own chunk writes (Orbax saves need every
  process) and `load_dictionary_npz` reads back."""
  buffer = io.BytesIO()
  arrays = _saved_arrays(dictionary)
  extras = arrays.pop("extras", {})
  np.savez(buffer, metadata=np.array(json.dumps(_metadata(dictionary))), **arrays,
           **{f"extras.{k}": v for k, v in extras.items()})
  atomic_files.write_bytes(path, buffer.getvalue())


def load_dictionary_npz(path: str) -> Dictionary:
  with np.load(path) as saved:
    arrays = {name: saved[name] for name in saved.files if name != "metadata" and "." not in name}
    extras = {name.partition(".")[2]: saved[name] for name in saved.files if name.startswith("extras.")}
    return _from_saved(json.loads(str(saved["metadata"])), {**arrays, **({"extras": extras} if extras else {})},
                       path)


def _from_saved(meta: dict[str, Any], arrays: dict[str, Any], path: str) -> Dictionary:
  """The Dictionary of saved metadata and arrays, checked against each other."""
  extras = dict(arrays.get("extras", {}))
  weights = arrays.get("weights")
  if (set(arrays) - {"extras", "weights"} != set(_VECTORS) or sorted(extras) != meta.get("extras", [])
      or (weights is None and meta.get("format_version", 0) < 3)
      or (weights is not None and np.shape(weights) != (meta["num_concepts"], meta["hidden_size"]))):
    raise DictionaryError(f"dictionary {path} is corrupt: its arrays do not match its metadata")
  return Dictionary(concept_ids=tuple(meta["concept_ids"]), concept_names=tuple(meta["concept_names"]),
                    method=meta["method"], model_name=meta["model_name"], layer=meta["layer"],
                    hyperparameters=meta["hyperparameters"], format_version=meta["format_version"],
                    extras={k: np.asarray(v) for k, v in extras.items()}, width=meta["hidden_size"],
                    weights=None if weights is None else np.asarray(weights),
                    **{name: np.asarray(arrays[name]) for name in _VECTORS})


def load_dictionary(path: str | os.PathLike, *, hidden_size: int | None = None, layer: int | None = None,
                    model_name: str | None = None) -> Dictionary:
  """Reads the dictionary saved at `path`; if given, checks it fits `hidden_size`, `layer` and `model_name`.

  Needs only numpy and orbax-checkpoint: no model or training code runs.
  """
  path = os.path.abspath(os.fspath(path))
  meta = _read_metadata(path)
  _check_fit(f"dictionary {path}", meta["hidden_size"], meta["layer"], meta["model_name"],
             hidden_size=hidden_size, layer=layer, model_name=model_name)
  arrays = _checkpointer().restore(path, ocp.args.Composite(arrays=ocp.args.StandardRestore()))["arrays"]
  return _from_saved(meta, arrays, path)
