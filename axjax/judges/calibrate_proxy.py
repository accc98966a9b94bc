"""Fits the proxy judge's thresholds on the even-indexed half of the hand-labelled set; scores the odd half.

`python -m axjax.judges.calibrate_proxy` scores each item's perplexity under the embedded 270M model (stored
back into the calibration file so tests reuse it; `--reuse_perplexity` skips that), searches every pair of
cut points per signal for the best exact agreement on the fit half, and writes proxy_thresholds.json with
the held-out agreement per aspect.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from axjax.atomic_files import write_json, write_text
from axjax.judges.base import ASPECTS, RatingRequest
from axjax.judges.proxy import (EMBEDDING_NAME, THRESHOLDS_FILE, Cuts, ProxyJudge, ProxyThresholds, ratings,
                                shared_embedder, signals)

CALIBRATION_FILE = os.path.join(os.path.dirname(__file__), "proxy_calibration.jsonl")
PERPLEXITY_MODEL = "gemma-3-270m"  # float32; the model whose perplexities the fluency cuts are fitted to
CAP_DEGENERATE_CONCEPT = True  # rubric: 1 = "awkwardly incorporated", which is all word salad or a loop can do


def read_calibration(path: str = CALIBRATION_FILE) -> tuple[list[dict], list[RatingRequest], np.ndarray]:
  """The items, their rating requests and their labels int8 [N, 3] in ASPECTS order."""
  with open(path) as f:
    items = [json.loads(line) for line in f if line.strip()]
  requests = [RatingRequest(it["concept"], it["instruction"], it["generation"]) for it in items]
  labels = np.array([[it["ratings"][a] for a in ASPECTS] for it in items], np.int8)
  return items, requests, labels


def stored_perplexity(items: Sequence[dict]) -> np.ndarray:
  return np.array([np.nan if it.get("perplexity") is None else it["perplexity"] for it in items], np.float64)


def fit_half(n: int) -> np.ndarray:
  """The fit half: items with an even index (the file's order is a fixed shuffle of the written groups)."""
  return np.arange(n) % 2 == 0


def fit_thresholds(sig: np.ndarray, labels: np.ndarray) -> ProxyThresholds:
  """Exhaustive search of cut points: fluency's four jointly (min of two ratings), then concept, instruction."""
  ppl_pairs, ppl_preds = _candidate_ratings(sig[:, 2])
  rep_pairs, rep_preds = _candidate_ratings(sig[:, 3])
  joint = np.minimum(rep_preds[:, None], ppl_preds[None, :]).reshape(-1, len(labels))
  best = _best(joint, labels[:, 2])
  rep, ppl = rep_pairs[best // len(ppl_pairs)], ppl_pairs[best % len(ppl_pairs)]
  fluency = joint[best]
  concept_pairs, concept_preds = _candidate_ratings(sig[:, 0])
  if CAP_DEGENERATE_CONCEPT:
    concept_preds = np.where(fluency == 0, np.minimum(concept_preds, 1), concept_preds)
  concept = concept_pairs[_best(concept_preds, labels[:, 0])]
  instruction_pairs, instruction_preds = _candidate_ratings(sig[:, 1])
  instruction = instruction_pairs[_best(instruction_preds, labels[:, 1])]
  return ProxyThresholds(concept, instruction, ppl, rep, CAP_DEGENERATE_CONCEPT)


def agreement(pred: np.ndarray, labels: np.ndarray, majority: np.ndarray) -> dict:
  """Per aspect: exact accuracy, quadratic-weighted kappa, Spearman, and the majority-label accuracy (chance)."""
  out = {}
  for k, aspect in enumerate(ASPECTS):
    p, y = pred[:, k], labels[:, k]
    rho = spearmanr(p, y)[0] if np.ptp(p) and np.ptp(y) else 0.0
    out[aspect] = {"accuracy": round(float(np.mean(p == y)), 4),
                   "quadratic_kappa": round(float(cohen_kappa_score(y, p, labels=[0, 1, 2], weights="quadratic")), 4),
                   "spearman": round(float(rho), 4),
                   "majority_label_accuracy": round(float(np.mean(y == majority[k])), 4)}
  h_pred, h_true = harmonic_score(pred), harmonic_score(labels)
  out["overall"] = {"proxy_mean": round(float(h_pred.mean()), 4), "label_mean": round(float(h_true.mean()), 4),
                    "spearman": round(float(spearmanr(h_pred, h_true)[0]), 4)}
  return out


def harmonic_score(r: np.ndarray) -> np.ndarray:
  """AxBench's per-generation overall score: harmonic mean of the three ratings, 0 if any is 0."""
  r = r.astype(np.float64)
  safe = np.where(r > 0, r, 1.0)
  return np.where((r > 0).all(axis=1), 3.0 / (1.0 / safe).sum(axis=1), 0.0)


def evaluate(thresholds: ProxyThresholds, sig: np.ndarray, labels: np.ndarray) -> dict:
  """Agreement on the fit half and the held-out half."""
  fit = fit_half(len(labels))
  majority = [int(np.bincount(labels[fit, k], minlength=3).argmax()) for k in range(len(ASPECTS))]
  pred = ratings(sig, thresholds)
  return {"fit": agreement(pred[fit], labels[fit], np.array(majority)),
          "heldout": agreement(pred[~fit], labels[~fit], np.array(majority))}


def main(argv: Sequence[str]) -> None:
  items, requests, labels = read_calibration()
  if "--reuse_perplexity" in argv:
    ppl = stored_perplexity(items)
  else:
    import axjax
    from axjax.judges.proxy import unsteered_perplexity

    ppl = unsteered_perplexity(axjax.load(PERPLEXITY_MODEL, "float32"))(requests)
    for it, p in zip(items, ppl):
      it["perplexity"] = None if np.isnan(p) else round(float(p), 4)
    write_text(CALIBRATION_FILE, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    ppl = stored_perplexity(items)
  sig = signals(shared_embedder(), requests, ppl)
  fit = fit_half(len(items))
  thresholds = fit_thresholds(sig[fit], labels[fit])
  report = {"judge": ProxyJudge.name, "embedding": EMBEDDING_NAME, **thresholds.to_json(),
            "calibration": {"file": os.path.basename(CALIBRATION_FILE), "items": len(items),
                            "fit_items": int(fit.sum()), "heldout_items": int((~fit).sum()),
                            "split": "fit on even item index, held out odd", "perplexity_model": PERPLEXITY_MODEL,
                            **evaluate(thresholds, sig, labels)}}
  write_json(THRESHOLDS_FILE, report)
  print(json.dumps(report["calibration"]["heldout"], indent=1))


def _candidate_ratings(x: np.ndarray) -> tuple[list[Cuts], np.ndarray]:
  """Every (lo <= hi) pair of cut points between sorted distinct values, and its ratings [pairs, N]."""
  v = np.unique(x[np.isfinite(x)])
  points = np.concatenate([[v[0] - 1.0], (v[1:] + v[:-1]) / 2, [v[-1] + 1.0]]) if len(v) else np.zeros(1)
  pairs = [Cuts(float(lo), float(hi)) for i, lo in enumerate(points) for hi in points[i:]]
  return pairs, np.stack([c.rate(x) for c in pairs])


def _best(preds: np.ndarray, y: np.ndarray) -> int:
  """The candidate with the most exact matches, then the highest quadratic kappa; the middle one of any tie."""
  accuracy = np.mean(preds == y, axis=1)
  p = preds.astype(np.float64)
  expected = p.var(axis=1) + y.var() + (p.mean(axis=1) - y.mean()) ** 2  # E[(pred - y)^2] if independent
  kappa = 1.0 - np.mean((p - y) ** 2, axis=1) / np.where(expected > 0, expected, np.inf)
  accuracy, kappa = np.round(accuracy, 9), np.round(kappa, 9)
  kappa = np.where(accuracy == accuracy.max(), kappa, -np.inf)
  ties = np.flatnonzero(kappa == kappa.max())
  return int(ties[len(ties) // 2])


if __name__ == "__main__":
  main(sys.argv[1:])
