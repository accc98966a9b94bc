"""The flag of the experiments whose methods read a GemmaScope SAE (SAE-A, SAE-MaxDiff)."""

from __future__ import annotations

from typing import Sequence

from absl import flags

from axjax.errors import AxjaxError
from axjax.loading.load import LoadedModel
from axjax.methods import sae, sae_methods

_SAE_PATH = flags.DEFINE_string(
    "sae_path", None, "A GemmaScope JumpReLU SAE for the model and layer (params.npz or .safetensors with W_enc, "
    "b_enc, threshold, W_dec, b_dec, or a folder holding one): the SAE methods choose one of its features per "
    "concept.")


def given() -> bool:
  """Whether --sae_path was given (the paper profile then adds its SAE rows)."""
  return _SAE_PATH.value is not None


def check(methods: Sequence[str]) -> None:
  """Refuses an SAE method without --sae_path, or --sae_path with no method to read it (before any model work)."""
  wanted = [m for m in methods if m in sae_methods.SELECTORS]
  if _SAE_PATH.value is None and wanted:
    raise sae_methods.missing_sae(wanted[0])
  if _SAE_PATH.value is not None and not wanted:
    raise AxjaxError(f"--sae_path is given but no method reads it: add {' or '.join(sae_methods.SELECTORS)} to "
                     "--methods")


def load(model: LoadedModel) -> sae.Sae | None:
  """The --sae_path SAE checked against the model (width, and the model it names), or None without the flag."""
  return None if _SAE_PATH.value is None else sae.load_sae(_SAE_PATH.value, model.config.hidden_size,
                                                           model_name=model.name)
