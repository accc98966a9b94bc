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


def load(model: LoadedModel, methods: Sequence[str]) -> sae.Sae | None:
  """The --sae_path SAE, checked against the model, when an SAE method runs; refuses a path no method reads."""
  wanted = [m for m in methods if m in sae_methods.SELECTORS]
  if _SAE_PATH.value is None:
    if wanted:
      raise AxjaxError(f"{wanted[0]} selects features of a GemmaScope SAE: pass --sae_path (its params.npz or "
                       ".safetensors for this model and layer)")
    return None
  if not wanted:
    raise AxjaxError(f"--sae_path is given but no method reads it: add {' or '.join(sae_methods.SELECTORS)} to "
                     "--methods")
  return sae.load_sae(_SAE_PATH.value, model.config.hidden_size, model_name=model.name)
