"""The rank-1 methods axjax trains or selects, with AxBench's hyperparameters and detection score for each."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from axjax.errors import AxjaxError
from axjax.model.config import GemmaConfig


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """What a method is: how it is trained and how its direction scores a token."""

  name: str
  trained: bool  # gradient-trained (jointly over concepts) rather than computed in closed form
  relu_score: bool  # detection score ReLU(h . w) (ReFT-r1, SSV) instead of h . w + b
  small: dict[str, Any]  # AxBench's hyperparameters for Gemma-2-2B-class models
  large: dict[str, Any]  # ... and for Gemma-2-9B-class models (where AxBench's 9B sweeps differ)


_CLOSED = {"batch_size": 6, "n_epochs": 1}
METHODS: dict[str, MethodSpec] = {m.name: m for m in [
    MethodSpec("DiffMean", False, False, _CLOSED, _CLOSED),
    MethodSpec("PCA", False, False, _CLOSED, _CLOSED),
    MethodSpec("LAT", False, False, _CLOSED, _CLOSED),
    MethodSpec("Random", False, False, {}, {}),
    MethodSpec("LinearProbe", True, False,
               {"batch_size": 12, "n_epochs": 24, "lr": 5e-3, "weight_decay": 1e-3, "coeff_l1_loss": 0.0,
                "loss": "axbench"},
               {"batch_size": 12, "n_epochs": 24, "lr": 1e-3, "weight_decay": 1e-4, "coeff_l1_loss": 0.0,
                "loss": "axbench"}),
    MethodSpec("ReFT-r1", True, True,
               {"batch_size": 6, "n_epochs": 3, "lr": 1e-2, "weight_decay": 0.0, "topk": 8,
                "coeff_latent_l1_loss": 5e-3, "topk_candidates": "axbench"},
               {"batch_size": 6, "n_epochs": 3, "lr": 5e-3, "weight_decay": 0.0, "topk": 8,
                "coeff_latent_l1_loss": 5e-3, "topk_candidates": "axbench"}),
    MethodSpec("SSV", True, True,
               {"batch_size": 6, "n_epochs": 3, "lr": 1e-2, "weight_decay": 0.0},
               {"batch_size": 6, "n_epochs": 3, "lr": 1e-2, "weight_decay": 0.0}),
    # One GemmaScope SAE feature per concept (--sae_path), chosen on the training data; JumpReLU scores.
    MethodSpec("SAE-A", False, True, {}, {}),
    MethodSpec("SAE-MaxDiff", False, True, {}, {}),
]}
# Hyperparameters that name a variant, with their choices. LinearProbe.loss: "axbench" is BCELoss(sigmoid(z))
# with torch's saturating gradients, "stable" the log-sigmoid form. ReFT-r1.topk_candidates: "axbench" lets
# copies of a pad token's latent enter the top-k as AxBench's batching does, "real" uses real tokens only.
CHOICES = {"loss": ("axbench", "stable"), "topk_candidates": ("axbench", "real")}
ALIASES = {"LsReFT": "ReFT-r1", "ReFT_r1": "ReFT-r1", "Probe": "LinearProbe", "SteeringVector": "SSV",
           "GemmaScopeSAEMaxAUC": "SAE-A", "SAE-MaxAUC": "SAE-A", "GemmaScopeSAEMaxDiff": "SAE-MaxDiff"}


def method(name: str) -> MethodSpec:
  """The spec of a method by its name (AxBench's class names are accepted too)."""
  spec = METHODS.get(ALIASES.get(name, name))
  if spec is None:
    raise AxjaxError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
  return spec


def hyperparameters(spec: MethodSpec, config: GemmaConfig, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """AxBench's defaults for the model's size class (9B values from width 3584 up), then the overrides."""
  values = dict(spec.large if config.hidden_size >= 3584 else spec.small)
  for key, value in (overrides or {}).items():
    if key not in values:
      raise AxjaxError(f"{spec.name} has no hyperparameter {key!r} (it has {', '.join(values) or 'none'})")
    values[key] = type(values[key])(value)
    if key in CHOICES and values[key] not in CHOICES[key]:
      raise AxjaxError(f"{spec.name}.{key} must be one of {', '.join(CHOICES[key])}, not {value!r}")
  return values


def _entry(item: str, flag: str, methods: list[str]) -> tuple[str, str, str]:
  """(method, key, value) of a flag entry 'Method.key=value' naming one of `methods`."""
  name, _, value = item.partition("=")
  meth, _, key = name.rpartition(".")
  if not value or not meth or not key:
    raise AxjaxError(f"{flag} entry {item!r} is not of the form Method.name=value")
  spec = method(meth)
  if spec.name not in methods:
    raise AxjaxError(f"{flag} names {spec.name}, which is not among --methods")
  return spec.name, key, value


def parse_overrides(items: list[str], methods: list[str]) -> dict[str, dict[str, str]]:
  """{'ReFT-r1': {'n_epochs': '1'}} from flag entries ['ReFT-r1.n_epochs=1'], for methods among `methods`."""
  out: dict[str, dict[str, str]] = {}
  for item in items:
    name, key, value = _entry(item, "--hparams", methods)
    out.setdefault(name, {})[key] = value
  return out


def parse_sweeps(items: list[str], methods: list[str]) -> dict[str, list[dict[str, str]]]:
  """{'ReFT-r1': [{'lr': '0.005'}, {'lr': '0.01'}]} from ['ReFT-r1.lr=0.005,0.01']: per method, every
  combination of the values given for its parameters."""
  axes: dict[str, dict[str, list[str]]] = {}
  for item in items:
    name, key, values = _entry(item, "--sweep", methods)
    axes.setdefault(name, {})[key] = values.split(",")
  return {name: [dict(zip(a, combo)) for combo in itertools.product(*a.values())] for name, a in axes.items()}


def grid_label(name: str, point: dict[str, Any]) -> str:
  """The name a sweep's grid point is reported under, e.g. 'ReFT-r1@lr=0.005'."""
  return name + "@" + ",".join(f"{k}={v}" for k, v in point.items())
