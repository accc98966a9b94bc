"""The steering protocol's settings (AxBench's by default) and the two named profiles of the steer job."""

from __future__ import annotations

import dataclasses

from axjax.errors import AxjaxError

AXBENCH_FACTORS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0)  # paper App. K
INTERVENTIONS = ("addition", "clamping", "min_clamping")


@dataclasses.dataclass(frozen=True)
class SteeringProtocol:
  """What is generated: factor grid, instructions per concept and their select/test split, decoding."""

  factors: tuple[float, ...] = AXBENCH_FACTORS
  instructions_per_concept: int = 10
  select_count: int = 5  # the first `select_count` drawn instructions choose the factor, the rest report it
  max_new_tokens: int = 128
  temperature: float = 1.0
  # "addition": h + factor * max_act * w; "clamping": AxBench's clamping (SAE methods: their feature's activation
  # set to factor * max_act); "min_clamping": an SAE feature raised to at least that (SAE methods only)
  intervention: str = "addition"

  def __post_init__(self):
    if not self.factors or len(set(self.factors)) != len(self.factors):
      raise AxjaxError(f"steering factors must be a non-empty list without repeats, got {list(self.factors)}")
    if not 0 < self.select_count < self.instructions_per_concept:
      raise AxjaxError(f"the factor-selection split needs 0 < select_count < instructions per concept, got "
                       f"{self.select_count} of {self.instructions_per_concept}")
    if self.intervention not in INTERVENTIONS:
      raise AxjaxError(f"unknown steering intervention {self.intervention!r}; expected one of {INTERVENTIONS}")


@dataclasses.dataclass(frozen=True)
class Profile:
  """Defaults of `experiments.steer` that each flag may override."""

  methods: tuple[str, ...]
  max_concepts: int | None
  protocol: SteeringProtocol
  prompt_writer: str = "judge"  # who writes PromptSteering's prompts: the judge's LLM, or "fallback" (labelled)


PROFILES = {
    # The whole AxBench protocol: every concept, the 14-factor grid, 10 instructions (5 select, 5 test), Table 2's
    # steering methods (SFT on its first 20 concepts) and Table 1's detection-only ones; `SAE_METHODS` join them
    # when an SAE is given.
    "paper": Profile(("PromptSteering", "LoReFT", "SFT", "LoRA", "ReFT-r1", "DiffMean", "LAT", "PCA", "LinearProbe",
                      "SSV", "PromptDetection", "BoW", "IntegratedGradients", "InputXGradients"), None,
                     SteeringProtocol()),
    # Minutes on a 2-core CPU: three concepts, two closed-form methods, five factors, short generations. Its factors
    # reach below AxBench's grid: the 270M model's max activations are inflated by one outlier dimension of its
    # residual stream (~1.7e4 at layer 12), so AxBench's smallest factor, 0.2, already swamps the stream there.
    # PromptSteering, the win-rate baseline, costs one generation per instruction; offline its prompt is AxBench's
    # fixed fallback, labelled as such.
    "quick": Profile(("PromptSteering", "DiffMean", "PCA"), 3,
                     SteeringProtocol(factors=(0.02, 0.05, 0.1, 0.2, 0.5), instructions_per_concept=4,
                                      select_count=2, max_new_tokens=128), prompt_writer="fallback"),
}
SAE_METHODS = ("SAE", "SAE-A")  # the paper profile's SAE rows (Tables 1 and 2), run when --sae_path is given


def profile(name: str) -> Profile:
  """The named profile, or one sentence listing the known ones."""
  if name not in PROFILES:
    raise AxjaxError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}")
  return PROFILES[name]
