"""Writes a float32 Hugging Face folder (model + tokenizer) from the Gemma 3 270M GGUF, for AxBench.

  python convert_model.py ~/.cache/axjax/models/gemma-3-270m-q4_k_m.gguf /work/axbench_ref/gemma-3-270m-hf

The GGUF is dequantized by transformers (the same float32 weights axjax and its benchmarks use). The GGUF
tokenizer has no chat template, so Gemma's standard one (the gemma-2-2b-it template AxBench ran with) is
stored with it: for user/assistant turns it renders exactly what axjax's GEMMA_CHAT_TEMPLATE renders.
"""

import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GEMMA_CHAT_TEMPLATE = (
  "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
  "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
  "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
  "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
  "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


def main(gguf: str, out: str, tokenizer_only: bool = False) -> None:
  """Dequantizes `gguf` into the HF folder `out` (float32 safetensors, tokenizer with chat template)."""
  folder, name = os.path.split(os.path.abspath(gguf))
  tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  if not tok.chat_template:
    tok.chat_template = GEMMA_CHAT_TEMPLATE
  if not tokenizer_only:
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The GGUF quantizer marks the (already dequantized, float32) model as unserializable; drop it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
      del model.config.quantization_config
    model.save_pretrained(out)
    print(type(model).__name__, model.config.num_hidden_layers, "layers, hidden", model.config.hidden_size)
  tok.save_pretrained(out)
  print("saved to", out)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], "--tokenizer_only" in sys.argv[3:])
