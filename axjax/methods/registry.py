"""Every method axjax runs, by kind, with AxBench's hyperparameters, and what it does: detect, steer, or both.

Kinds (each has one module that trains it, scores detection with it and/or steers with it):
- "direction": rank-1 dictionaries (DiffMean, PCA, LAT, LinearProbe, ReFT-r1, SSV, Random, SAE features);
  detection scores h . w (+ b, or ReLU), steering adds factor * max_act * w.
- "adapter": LoReFT and LoRA (`adapter_training`), several layers at once; steering without a factor.
- "sft": a full fine-tune per concept (`sft`), trained in the steering stage; steering without a factor.
- "bow": AxBench's bag-of-words classifier (`bow`); example-level detection scores.
- "attribution": IntegratedGradients / InputXGradients (`attribution`); token scores from attributions.
- "prompt": PromptSteering (a written steering prompt) and PromptDetection (the model rates the concept).
- "preference": RePS and its baselines (`preference_methods`): a steering vector, LoReFT or LoRA trained on
  preference pairs (RePS, BiPO) or with the LM loss (the "Lang." rows); steering with a factor on its own grid.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from axjax.errors import AxjaxError
from axjax.model.config import GemmaConfig


KINDS = ("direction", "adapter", "sft", "bow", "attribution", "prompt", "preference")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """What a method is: its kind, how it is trained, and whether it detects and steers."""

  name: str
  trained: bool  # gradient-trained (jointly over concepts) rather than computed in closed form
  relu_score: bool  # detection score ReLU(h . w) (ReFT-r1, SSV) instead of h . w + b
  small: dict[str, Any]  # AxBench's hyperparameters for Gemma-2-2B-class models
  large: dict[str, Any]  # ... and for Gemma-2-9B-class models (where AxBench's 9B sweeps differ)
  kind: str = "direction"
  detects: bool = True  # AxBench's LATENT_EXCLUDE_MODELS have no detection
  steers: bool = True  # AxBench's STEERING_EXCLUDE_MODELS do not steer

  @property
  def uses_factor(self) -> bool:
    """Steering scales a direction by a factor; the other methods steer without one (AxBench averages their
    rows over factors, so axjax generates them once per instruction)."""
    return self.kind in ("direction", "preference")


_CLOSED = {"batch_size": 6, "n_epochs": 1}
_ADAPTER = {"n_epochs": 24, "weight_decay": 0.0, "low_rank_dimension": 4, "layers": "auto"}
_SFT = {"batch_size": 18, "gradient_accumulation_steps": 4, "n_epochs": 8, "lr": 4e-5, "weight_decay": 0.0,
        "max_grad_norm": 1.0, "max_concepts": 20, "dtype": "float32"}
# ig.yaml (the MLP head on the final-layer last-token state); 9B: accumulation 8, 72 epochs, lr 8e-5.
_IG = {"batch_size": 18, "gradient_accumulation_steps": 2, "n_epochs": 24, "lr": 4e-4, "weight_decay": 2e-4}
_IG_9B = {**_IG, "gradient_accumulation_steps": 8, "n_epochs": 72, "lr": 8e-5}
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
    # One GemmaScope SAE feature per concept (--sae_path): the metadata's (SAE), or chosen on the training data
    # (SAE-A, SAE-MaxDiff); JumpReLU scores.
    MethodSpec("SAE", False, True, {}, {}),
    MethodSpec("SAE-A", False, True, {}, {}),
    MethodSpec("SAE-MaxDiff", False, True, {}, {}),
    # AxBench's sweeps (axbench/sweep/wuzhengx/{2b,9b}/*/{loreft,lora}.yaml); "large" is 9B (its L31 LoRA run
    # uses batch 9 x accumulation 4, the same 36 rows per step). `layers`: "auto" (`adapter_training.
    # default_layers`) or e.g. "5+10+15+20". `max_grad_norm`: each concept's gradient clipped to this global norm
    # (0: none), as reft.py / lora.py; `accumulate`: "sum" is LoReFT's backward-before-division quirk.
    MethodSpec("LoReFT", True, False,
               {**_ADAPTER, "batch_size": 18, "gradient_accumulation_steps": 2, "lr": 9e-4, "positions": "f5+l5",
                "accumulate": "sum", "max_grad_norm": 1.0},
               {**_ADAPTER, "batch_size": 9, "gradient_accumulation_steps": 4, "lr": 4e-4, "positions": "f5+l5",
                "accumulate": "sum", "max_grad_norm": 1.0}, kind="adapter", detects=False),
    MethodSpec("LoRA", True, False,
               {**_ADAPTER, "batch_size": 18, "gradient_accumulation_steps": 2, "lr": 9e-4, "lora_alpha": 32.0,
                "dropout": 0.05, "accumulate": "mean", "max_grad_norm": 0.0},
               {**_ADAPTER, "batch_size": 18, "gradient_accumulation_steps": 2, "lr": 5e-3, "lora_alpha": 32.0,
                "dropout": 0.05, "accumulate": "mean", "max_grad_norm": 0.0}, kind="adapter", detects=False),
    # sft.yaml (2B only; AxBench trains 9B with FSDP): the first 20 concepts.
    MethodSpec("SFT", True, False, _SFT, _SFT, kind="sft", detects=False),
    # bow.yaml: CountVectorizer + LogisticRegression(C=100, lbfgs, max_iter=1000), random_state 42.
    MethodSpec("BoW", False, False, {"C": 100.0, "max_iter": 1000}, {"C": 100.0, "max_iter": 1000}, kind="bow",
               steers=False),
    MethodSpec("IntegratedGradients", True, False, {**_IG, "steps": 50}, {**_IG_9B, "steps": 50},
               kind="attribution", steers=False),
    MethodSpec("InputXGradients", True, False, _IG, _IG_9B, kind="attribution", steers=False),
    # A steering prompt per concept, written by `--prompt_writer` (else AxBench's fixed fallback, labelled).
    MethodSpec("PromptSteering", False, False, {}, {}, kind="prompt", detects=False),
    # prompt_detection.yaml: the model rates each eval output with the concept rubric (512 tokens, temperature 1).
    MethodSpec("PromptDetection", False, False, {"max_new_tokens": 512, "temperature": 1.0},
               {"max_new_tokens": 512, "temperature": 1.0}, kind="prompt", steers=False),
]}


def _grid(*values: float) -> str:
  """A factor list as the "+"-joined hyperparameter text ("2+4+6")."""
  return "+".join(f"{v:g}" for v in values)


# RePS's sweeps (axbench/sweep/wuzhengx/reps/experiments/{p,c}_{vector,loreft,lora}_{dps,bipo}_g2-{2b,9b}_axbench.yaml;
# reference section 6): "factors" are the training draws, "steering_factors" the inference grid (joined by "+").
# `response_tokens`: the length of the model's own responses y; `subtraction`: the sub pair's factor, 0 with the
# vector's null-out ("null_out", upstream's null_it_out) or minus a drawn one ("negate", its "normal").
_SV_FACTORS, _SV_GRID = _grid(*range(2, 21, 2)), _grid(*range(2, 21, 2), 25, 30, 40, 50)
_ADAPTER_FACTORS = _grid(*(i / 5 for i in range(1, 11)))
_AXBENCH_GRID = _grid(0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0)
_PREFERENCE = {"gradient_accumulation_steps": 1, "weight_decay": 0.0, "max_grad_norm": 1.0,
               "loss_type": "scaled_simpo", "length_norm": "sequence", "subtraction": "negate", "dropout": 0.0,
               "response_tokens": 512, "layers": "auto", "low_rank_dimension": 4, "positions": "f5+l5"}


def _preference(name: str, edit_factors: str, grid: str, small: dict[str, Any], large: dict[str, Any]) -> MethodSpec:
  base = {**_PREFERENCE, "factors": edit_factors, "steering_factors": grid}
  if name.startswith("SV-"):  # one layer (the run's), no rank, no positions
    base = {k: v for k, v in base.items() if k not in ("layers", "low_rank_dimension", "positions")}
  return MethodSpec(name, True, False, {**base, **small}, {**base, **large}, kind="preference", detects=False)


_BIPO = {"loss_type": "dpo", "factors": "1"}
_LANG = {"loss_type": "lm"}
# Upstream's vector and LoReFT dropout (on the edit) is not implemented: where a sweep sets it (9B SV RePS,
# LoReFT-Lang/BiPO), axjax trains without it (WORKSPACE.md lists the departure); LoRA's dropout is.
PREFERENCE_METHODS = [
    _preference("SV-RePS", _SV_FACTORS, _SV_GRID, {"batch_size": 6, "n_epochs": 18, "lr": 0.04, "subtraction": "null_out"},
                {"batch_size": 6, "n_epochs": 18, "lr": 0.08, "subtraction": "null_out"}),
    _preference("LoReFT-RePS", _ADAPTER_FACTORS, _AXBENCH_GRID,
                {"batch_size": 3, "gradient_accumulation_steps": 4, "n_epochs": 18, "lr": 0.04},
                {"batch_size": 6, "gradient_accumulation_steps": 2, "n_epochs": 12, "lr": 0.04}),
    _preference("LoRA-RePS", _ADAPTER_FACTORS, _AXBENCH_GRID,
                {"batch_size": 6, "n_epochs": 6, "lr": 0.08, "dropout": 0.1},
                {"batch_size": 2, "gradient_accumulation_steps": 6, "n_epochs": 6, "lr": 0.08, "dropout": 0.1}),
    _preference("SV-Lang", _SV_FACTORS, _SV_GRID, {**_LANG, "batch_size": 6, "gradient_accumulation_steps": 2,
                                                   "n_epochs": 6, "lr": 0.04},
                {**_LANG, "batch_size": 6, "gradient_accumulation_steps": 2, "n_epochs": 12, "lr": 0.08}),
    _preference("LoReFT-Lang", _ADAPTER_FACTORS, _AXBENCH_GRID, {**_LANG, "batch_size": 6, "n_epochs": 12, "lr": 0.04},
                {**_LANG, "batch_size": 6, "n_epochs": 12, "lr": 0.04}),
    _preference("LoRA-Lang", _ADAPTER_FACTORS, _AXBENCH_GRID,
                {**_LANG, "batch_size": 6, "gradient_accumulation_steps": 2, "n_epochs": 6, "lr": 0.04},
                {**_LANG, "batch_size": 6, "gradient_accumulation_steps": 2, "n_epochs": 18, "lr": 0.08,
                 "dropout": 0.1}),
    _preference("SV-BiPO", "1", _AXBENCH_GRID, {**_BIPO, "batch_size": 6, "gradient_accumulation_steps": 2,
                                                "n_epochs": 12, "lr": 0.04},
                {**_BIPO, "batch_size": 6, "gradient_accumulation_steps": 2, "n_epochs": 12, "lr": 0.08}),
    _preference("LoReFT-BiPO", "1", _AXBENCH_GRID, {**_BIPO, "batch_size": 3, "gradient_accumulation_steps": 2,
                                                    "n_epochs": 18, "lr": 0.04},
                {**_BIPO, "batch_size": 3, "gradient_accumulation_steps": 2, "n_epochs": 12, "lr": 0.04}),
    _preference("LoRA-BiPO", "1", _AXBENCH_GRID, {**_BIPO, "batch_size": 6, "n_epochs": 12, "lr": 0.04, "dropout": 0.1},
                {**_BIPO, "batch_size": 3, "gradient_accumulation_steps": 2, "n_epochs": 12, "lr": 0.08,
                 "dropout": 0.1}),
]
METHODS.update({m.name: m for m in PREFERENCE_METHODS})

# Hyperparameters that name a variant, with their choices. LinearProbe.loss: "axbench" is BCELoss(sigmoid(z))
# with torch's saturating gradients, "stable" the log-sigmoid form. ReFT-r1.topk_candidates: "axbench" lets
# copies of a pad token's latent enter the top-k as AxBench's batching does, "real" uses real tokens only.
CHOICES = {"loss": ("axbench", "stable"), "topk_candidates": ("axbench", "real"), "accumulate": ("sum", "mean"),
           "dtype": ("float32", "bfloat16"), "loss_type": ("scaled_simpo", "dpo", "simpo", "lm"),
           "length_norm": ("sequence", "response"), "subtraction": ("null_out", "negate")}
ALIASES = {"LsReFT": "ReFT-r1", "ReFT_r1": "ReFT-r1", "Probe": "LinearProbe", "SteeringVector": "SSV",
           "GemmaScopeSAE": "SAE", "GemmaScopeSAEMaxAUC": "SAE-A", "SAE-MaxAUC": "SAE-A", "GemmaScopeSAEMaxDiff": "SAE-MaxDiff",
           "IG": "IntegratedGradients", "IxG": "InputXGradients", "Prompt": "PromptSteering",
           "RePS": "SV-RePS", "PreferenceVector": "SV-RePS", "PreferenceLoReFT": "LoReFT-RePS",
           "PreferenceLoRA": "LoRA-RePS", "ConceptVector": "SV-Lang", "ConceptLoReFT": "LoReFT-Lang",
           "ConceptLoRA": "LoRA-Lang"}


def method(name: str) -> MethodSpec:
  """The spec of a method by its name (AxBench's class names are accepted too)."""
  spec = METHODS.get(ALIASES.get(name, name))
  if spec is None:
    raise AxjaxError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
  return spec


def detecting(names: list[str]) -> list[str]:
  """The methods among `names` that detect concepts."""
  return [n for n in names if method(n).detects]


def steering(names: list[str]) -> list[str]:
  """The methods among `names` that steer."""
  return [n for n in names if method(n).steers]


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
