"""Prints completions of prompts, optionally steered by a vector added to the residual stream after a layer.

  python -m experiments.generate                                  # embedded Gemma 3 270M, example prompts
  python -m experiments.generate --prompt="The ocean is" --layer=6 --vector_file=v.npy --factor=40
"""

from __future__ import annotations

from absl import app, flags
import numpy as np

import axjax
from axjax.errors import AxjaxError
from axjax.generation.sampling import SamplingConfig
from axjax.generation.text import generate_text
from experiments import cli

_MODEL = flags.DEFINE_string("model", axjax.EMBEDDED_MODEL,
                             "An HF checkpoint folder, a .gguf file, or 'gemma-3-270m' (embedded default).")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Prompt(s) to complete; repeat the flag for several.")
_CHAT = flags.DEFINE_bool("chat", False, "Wrap each prompt as a user turn of the chat template.")
_LAYER = flags.DEFINE_integer("layer", None, "Decoder layer after which the steering vector is added.")
_VECTOR = flags.DEFINE_string("vector_file", None, "A .npy file holding one [d] steering vector.")
_FACTOR = flags.DEFINE_float("factor", 1.0, "Multiplier of the steering vector.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "Tokens to generate per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 is greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed for sampling.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and activation dtype.")

EXAMPLE_PROMPTS = ["The best way to learn a new language is", "def fibonacci(n):", "Once upon a time"]


def read_vector(path: str) -> np.ndarray:
  """One steering vector [d] from a .npy file."""
  try:
    vector = np.load(path)
  except (OSError, ValueError) as e:
    raise AxjaxError(f"cannot read a steering vector from {path} ({e})") from None
  if vector.ndim != 1:
    raise AxjaxError(f"{path} holds an array of shape {vector.shape}; a steering vector has shape [d]")
  return vector.astype(np.float32)


def main(argv):
  del argv
  if (_LAYER.value is None) != (_VECTOR.value is None):
    raise app.UsageError("--layer and --vector_file go together: give both to steer, or neither")
  vector = read_vector(_VECTOR.value) if _VECTOR.value else None
  model = axjax.load(_MODEL.value, _DTYPE.value)
  prompts = _PROMPT.value or EXAMPLE_PROMPTS
  intervention = params = None
  if vector is not None:
    intervention = axjax.steering(model.config.check_layer(_LAYER.value))
    params = axjax.steering_params(np.repeat(vector[None], len(prompts), 0), np.full(len(prompts), _FACTOR.value))
  sampling = SamplingConfig(_MAX_NEW.value, _TEMPERATURE.value, _TOP_P.value)
  texts = generate_text(model, prompts, sampling=sampling, seed=_SEED.value, chat=_CHAT.value,
                        batch_size=min(len(prompts), 16), intervention=intervention, intervention_params=params)
  steer = f" (steered at layer {_LAYER.value}, factor {_FACTOR.value})" if vector is not None else ""
  print(f"# {model.name}{steer}")
  for prompt, text in zip(prompts, texts):
    print(f"\n>>> {prompt}\n{prompt}{text}")


if __name__ == "__main__":
  cli.run(main)
