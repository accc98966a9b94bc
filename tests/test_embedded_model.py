"""The embedded Gemma 3 270M equals transformers' own GGUF load of the same file (float32, full matmul precision
as set in conftest.py; bfloat16 within its stated tolerance)."""

import os

import numpy as np
import pytest
import transformers

import axjax
from axjax.loading.tokenizer import gguf_tokenizer

PARAGRAPH = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from wine making. Within a few decades, "
    "printing shops had spread to more than two hundred cities across Europe, and the price of books fell "
    "sharply. Scholars could compare identical copies of a text, which helped standardise spelling and "
    "grammar, and ideas travelled faster than ever before.")


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
  logits = logits[0, :-1].astype(np.float64)
  top = logits.max(-1, keepdims=True)
  logz = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
  return float(np.exp(np.mean(logz - logits[np.arange(len(ids[0]) - 1), ids[0, 1:]])))


def test_config_and_tokenizer(embedded):
  c = embedded.config
  assert (c.family, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (3, 18, 640, 4, 1, 256)
  assert c.sliding_layers == ((True,) * 5 + (False,)) * 3 and c.sliding_window == 512
  assert (c.rope_theta_global, c.rope_theta_local) == (1e6, 1e4)
  assert embedded.tokenizer("Hello world").input_ids == [2, 9259, 1902]
  chat = embedded.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                                tokenize=False)
  assert chat == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_logits_and_perplexity_match_transformers(embedded):
  torch = pytest.importorskip("torch")  # the only test here that needs the PyTorch reference
  ids = embedded.tokenizer(PARAGRAPH, return_tensors="np").input_ids
  ours = np.asarray(axjax.forward(embedded.params, embedded.config, ids).logits)
  folder, name = os.path.split(embedded.source)
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                                attn_implementation="eager").eval()
  with torch.no_grad():
    ref = ref_model(torch.tensor(ids)).logits.numpy()
  assert np.abs(ours - ref).max() <= 1e-3  # measured 6.5e-5 on logits of magnitude ~30
  ppl, ref_ppl = perplexity(ours, ids), perplexity(ref, ids)
  assert abs(ppl - ref_ppl) / ref_ppl <= 1e-3
  assert 5 < ppl < 40


def test_bfloat16_tracks_float32(embedded):
  ids = embedded.tokenizer(PARAGRAPH, return_tensors="np").input_ids
  bf16 = axjax.load(embedded.source, dtype="bfloat16")  # the .gguf path branch
  f32 = np.asarray(axjax.forward(embedded.params, embedded.config, ids).logits)
  b16 = np.asarray(axjax.forward(bf16.params, bf16.config, ids).logits)
  assert bf16.params["embed"].dtype == np.dtype("bfloat16")
  assert abs(perplexity(b16, ids) - perplexity(f32, ids)) / perplexity(f32, ids) < 0.1


def test_tokenizer_is_converted_from_the_gguf_once(embedded, monkeypatch):
  calls = []
  real = transformers.AutoTokenizer.from_pretrained
  monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                      lambda *args, **kwargs: calls.append(kwargs) or real(*args, **kwargs))
  tok = gguf_tokenizer(embedded.source)
  assert calls and not any("gguf_file" in kwargs for kwargs in calls)  # read back from the on-disk cache
  assert tok("Hello world").input_ids == embedded.tokenizer("Hello world").input_ids


def test_torch_free_tokenizer_conversion_equals_transformers_gguf_path(embedded):
  """Our conversion (no PyTorch needed) gives the tokenizer transformers builds through its own GGUF reader."""
  folder, name = os.path.split(embedded.source)
  ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  texts = [PARAGRAPH, "  leading spaces\tand tabs\n\nnew lines", "code: def f(x):\n    return x**2  # ü ß 漢字 🙂",
           "<start_of_turn>user\nHi<end_of_turn>\n"]
  for text in texts:
    assert embedded.tokenizer(text).input_ids == ref(text).input_ids
    assert embedded.tokenizer.decode(ref(text).input_ids) == ref.decode(ref(text).input_ids)
  assert (embedded.tokenizer.bos_token_id, embedded.tokenizer.eos_token_id, embedded.tokenizer.pad_token_id) == (
      ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
