"""AxBench's SAE methods as dictionaries: one GemmaScope feature per concept, named or chosen on its training data.

SAE (AxBench's GemmaScopeSAE) takes the feature that the concept was described from: the Neuronpedia `ref` of
the dataset's metadata, or `--sae_features`. SAE-A (AxBench's GemmaScopeSAEMaxAUC) takes the feature whose per-example max activation has the best training
ROC AUC; SAE-MaxDiff (GemmaScopeSAEMaxDiff) the largest difference of class means of token-averaged activations.
Both score all F features of the concepts' binarized training rows in one streamed pass (`sae.feature_stats`).
The chosen feature becomes a rank-1 dictionary entry: detection reads its encoder column, bias and JumpReLU
threshold (score `1[z > theta] ReLU(z)`), steering adds its decoder row (the `steering_vector` extra).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from axjax.dictionary import Dictionary
from axjax.errors import AxjaxError
from axjax.methods import sae as sae_lib

if TYPE_CHECKING:
  from axjax.methods.fit import ActivationCache

SELECTORS = {"SAE-A": sae_lib.max_auc_feature, "SAE-MaxDiff": sae_lib.max_diff_feature}
FIXED = "SAE"  # the concept's own feature, from the metadata or --sae_features
METHODS = (FIXED, *SELECTORS)
_ROWS = 16  # shared training rows per encoding batch
# https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/16038: model, layer, SAE width, feature
_REF = re.compile(r"neuronpedia\.org/(?P<model>[^/]+)/(?P<layer>\d+)-gemmascope-res-(?P<width>\d+[km])/(?P<feature>\d+)/?$")


def missing_sae(name: str) -> AxjaxError:
  """The one sentence for SAE method `name` run without an SAE."""
  return AxjaxError(f"{name} selects features of a GemmaScope SAE: pass --sae_path (its params.npz or "
                    ".safetensors for this model and layer)")


def parse_features(entries: Sequence[str]) -> dict[int, int]:
  """--sae_features: "concept_id:feature" pairs, or one JSON file mapping concept ids to features."""
  if len(entries) == 1 and os.path.isfile(entries[0]):
    try:
      with open(entries[0]) as f:
        pairs = json.load(f)
      return {int(c): int(f) for c, f in pairs.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
      raise AxjaxError(f"--sae_features {entries[0]} is not a JSON object of concept id -> feature ({e})") from None
  try:
    return {int(c): int(f) for c, f in (entry.split(":") for entry in entries)}
  except ValueError:
    raise AxjaxError(f"--sae_features must be concept_id:feature pairs or a JSON file, got {list(entries)}") from None


def _width_label(features: int) -> str:
  """Neuronpedia's name for an SAE of `features` features: 16384 -> 16k, 131072 -> 131k, 1048576 -> 1m."""
  if features < 1000:
    return str(features)
  return f"{features // 1000}k" if features < 10**6 else f"{features // 10**6}m"


def concept_features(concepts, sae: sae_lib.Sae, layer: int, model_name: str,
                     chosen: Mapping[int, int] | None = None) -> dict[int, int]:
  """Each concept's feature for the SAE method: `chosen` (--sae_features) where given, else its metadata `ref`,
  which must name this model's layer and an SAE of this width; one sentence for the first that cannot be used."""
  chosen = dict(chosen or {})
  if unknown := sorted(set(chosen) - {c.concept_id for c in concepts}):
    raise AxjaxError(f"--sae_features names concept {unknown[0]}, which is not among the run's concepts")
  ours = (sae_lib.model_key(sae.model_name or model_name), layer, _width_label(sae.num_features))
  out = {}
  for concept in concepts:
    if concept.concept_id in chosen:
      out[concept.concept_id] = chosen[concept.concept_id]
      continue
    ref = _REF.search(concept.ref or "")
    if ref is None:
      raise AxjaxError(f"concept {concept.concept_id} has no GemmaScope feature in its metadata (ref "
                       f"{concept.ref!r}): pass --sae_features={concept.concept_id}:<feature>")
    if (sae_lib.model_key(ref["model"]), int(ref["layer"]), ref["width"]) != ours:
      raise AxjaxError(f"concept {concept.concept_id}'s metadata feature is of the SAE of {ref['model']} layer "
                       f"{ref['layer']}, {ref['width']} features, not of this one ({ours[0]} layer {layer}, "
                       f"{ours[2]} features): pass --sae_features (concept_id:feature pairs or a JSON file)")
    out[concept.concept_id] = int(ref["feature"])
  bad = {c: f for c, f in out.items() if not 0 <= f < sae.num_features}
  if bad:
    c = min(bad)
    raise AxjaxError(f"concept {c}'s SAE feature {bad[c]} is out of range: the SAE has {sae.num_features} features")
  return out


def read_max_activations(path: str) -> dict[int, float]:
  """--sae_max_acts: a JSON object of feature -> max activation (Neuronpedia's maxValue, as AxBench caches it in
  `{model}_{sae}_max_activations.json`)."""
  try:
    with open(path) as f:
      values = json.load(f)
    return {int(k): float(v) for k, v in values.items()}
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
    raise AxjaxError(f"--sae_max_acts {path} is not a JSON object of SAE feature -> max activation ({e})") from None


def with_max_activations(dictionary: Dictionary, max_acts: Mapping[int, float]) -> Dictionary:
  """An SAE method's dictionary steering with the given per-feature max activations (AxBench's Neuronpedia
  max_act) in place of those of its latent evaluation."""
  features = dictionary.extras["feature"].tolist()
  if missing := [f for f in features if f not in max_acts]:
    raise AxjaxError(f"--sae_max_acts has no max activation for feature {missing[0]} ({dictionary.method})")
  return dataclasses.replace(dictionary, max_activations=np.array([max_acts[f] for f in features], np.float32))


def shared_labels(ex) -> np.ndarray:
  """[U, C] int8 label of each shared row for each concept: 1 its positive, 0 its negative, -1 not its example."""
  labels = np.full((len(ex.tokens), len(ex.concept_ids)), -1, np.int8)
  for c in range(len(ex.concept_ids)):
    valid = ex.row_valid[c]
    labels[ex.index[c, valid], c] = ex.labels[c, valid]
  return labels


def select_features(name: str, cache: ActivationCache) -> dict[str, np.ndarray]:
  """The dictionary arrays of SAE method `name` for the cache's concepts: weights [C, d] (encoder columns), biases
  [C], and extras `feature`, `jump_threshold` and `steering_vector` (decoder rows)."""
  sae = cache.sae
  if sae is None:
    raise missing_sae(name)
  if name == FIXED:
    chosen = concept_features(cache.concepts, sae, cache.layer, cache.model.name, cache.sae_features)
    features = np.array([chosen[c.concept_id] for c in cache.concepts])
  else:
    ex, acts = cache.examples("binarized")
    labels = shared_labels(ex)
    used = np.flatnonzero((labels >= 0).any(axis=1))  # the all-pad filler row belongs to no concept
    batches = ((acts[rows], ex.probe_mask[rows], labels[rows]) for rows in np.array_split(
        used, max(1, -(-len(used) // _ROWS))))  # AxBench's SAE statistics read every token after BOS
    features = SELECTORS[name](sae_lib.feature_stats(sae, batches))
  return {"weights": np.asarray(sae.w_enc[:, features]).T, "biases": np.asarray(sae.b_enc[features]),
          "extras": {"feature": features.astype(np.int32), "jump_threshold": np.asarray(sae.threshold[features]),
                     "steering_vector": np.asarray(sae.w_dec[features])}}
