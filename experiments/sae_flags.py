"""The flags of the experiments whose methods read a GemmaScope SAE (SAE, SAE-A, SAE-MaxDiff)."""

from __future__ import annotations

from typing import Mapping, Sequence

from absl import flags

from axjax.dictionary import Dictionary
from axjax.errors import AxjaxError
from axjax.loading.load import LoadedModel
from axjax.methods import sae, sae_methods

_SAE_PATH = flags.DEFINE_string(
    "sae_path", None, "A GemmaScope JumpReLU SAE for the model and layer (params.npz or .safetensors with W_enc, "
    "b_enc, threshold, W_dec, b_dec, or a folder holding one): the SAE methods use one of its features per "
    "concept.")
_SAE_FEATURES = flags.DEFINE_list(
    "sae_features", None, "Method SAE's feature per concept as concept_id:feature pairs, or a JSON file of them "
    "(default: each concept's Neuronpedia `ref` in the dataset's metadata, where it names this model, layer and "
    "SAE width).")
_SAE_MAX_ACTS = flags.DEFINE_string(
    "sae_max_acts", None, "Steer the SAE methods with these max activations (a JSON object feature -> value, "
    "e.g. Neuronpedia's maxValue as AxBench caches it) instead of their latent evaluation's (AxBench's "
    "disable_neuronpedia_max_act).")


def given() -> bool:
  """Whether --sae_path was given (the paper profile then adds its SAE rows)."""
  return _SAE_PATH.value is not None


def check(methods: Sequence[str]) -> None:
  """Refuses an SAE method without --sae_path, or an SAE flag with no method to read it (before any model work)."""
  wanted = [m for m in methods if m in sae_methods.METHODS]
  if _SAE_PATH.value is None and wanted:
    raise sae_methods.missing_sae(wanted[0])
  if _SAE_PATH.value is not None and not wanted:
    raise AxjaxError(f"--sae_path is given but no method reads it: add {' or '.join(sae_methods.METHODS)} to "
                     "--methods")
  if _SAE_FEATURES.value and sae_methods.FIXED not in methods:
    raise AxjaxError(f"--sae_features is given but method {sae_methods.FIXED} (which reads it) is not in --methods")
  if _SAE_MAX_ACTS.value is not None and not wanted:
    raise AxjaxError("--sae_max_acts is given but no SAE method steers with it: add one of "
                     f"{', '.join(sae_methods.METHODS)} to --methods")


def load(model: LoadedModel, concepts, layer: int, methods: Sequence[str]) -> tuple[sae.Sae | None,
                                                                                     dict[int, int] | None]:
  """The --sae_path SAE checked against the model (width, and the model it names), or None without the flag; and,
  when method SAE runs, each concept's feature (checked against the SAE before any training)."""
  if _SAE_PATH.value is None:
    return None, None
  loaded = sae.load_sae(_SAE_PATH.value, model.config.hidden_size, model_name=model.name)
  if sae_methods.FIXED not in methods:
    return loaded, None
  chosen = sae_methods.parse_features(_SAE_FEATURES.value) if _SAE_FEATURES.value else None
  return loaded, sae_methods.concept_features(concepts, loaded, layer, model.name, chosen)


def max_activations() -> dict[int, float] | None:
  """The --sae_max_acts values (read before any model work), or None."""
  return None if _SAE_MAX_ACTS.value is None else sae_methods.read_max_activations(_SAE_MAX_ACTS.value)


def steering_dictionaries(dictionaries: Mapping[str, Dictionary],
                          max_acts: Mapping[int, float] | None) -> dict[str, Dictionary]:
  """The dictionaries to steer with: those of the SAE methods with the --sae_max_acts values, where given."""
  return {name: sae_methods.with_max_activations(d, max_acts) if max_acts is not None and name in
          sae_methods.METHODS else d for name, d in dictionaries.items()}
