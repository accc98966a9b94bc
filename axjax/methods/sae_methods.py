"""AxBench's SAE detection methods as dictionaries: one GemmaScope feature chosen per concept on its training data.

SAE-A (AxBench's GemmaScopeSAEMaxAUC) takes the feature whose per-example max activation has the best training
ROC AUC; SAE-MaxDiff (GemmaScopeSAEMaxDiff) the largest difference of class means of token-averaged activations.
Both score all F features of the concepts' binarized training rows in one streamed pass (`sae.feature_stats`).
The chosen feature becomes a rank-1 dictionary entry: detection reads its encoder column, bias and JumpReLU
threshold (score `1[z > theta] ReLU(z)`), steering adds its decoder row (the `steering_vector` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from axjax.errors import AxjaxError
from axjax.methods import sae as sae_lib

if TYPE_CHECKING:
  from axjax.methods.fit import ActivationCache

SELECTORS = {"SAE-A": sae_lib.max_auc_feature, "SAE-MaxDiff": sae_lib.max_diff_feature}
_ROWS = 16  # shared training rows per encoding batch


def missing_sae(name: str) -> AxjaxError:
  """The one sentence for SAE method `name` run without an SAE."""
  return AxjaxError(f"{name} selects features of a GemmaScope SAE: pass --sae_path (its params.npz or "
                    ".safetensors for this model and layer)")


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
  ex, acts = cache.examples("binarized")
  labels = shared_labels(ex)
  used = np.flatnonzero((labels >= 0).any(axis=1))  # the all-pad filler row belongs to no concept
  batches = ((acts[rows], ex.probe_mask[rows], labels[rows]) for rows in np.array_split(
      used, max(1, -(-len(used) // _ROWS))))  # AxBench's SAE statistics read every token after BOS
  features = SELECTORS[name](sae_lib.feature_stats(sae, batches))
  return {"weights": np.asarray(sae.w_enc[:, features]).T, "biases": np.asarray(sae.b_enc[features]),
          "extras": {"feature": features.astype(np.int32), "jump_threshold": np.asarray(sae.threshold[features]),
                     "steering_vector": np.asarray(sae.w_dec[features])}}
