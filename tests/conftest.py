"""Shared fixtures: tiny random Hugging Face Gemma checkpoints (PyTorch reference) and the embedded model.

PyTorch is optional: only the fixtures and helpers that build the tiny reference models import it (through
`pytest.importorskip`, so the tests using them skip without it); every other test runs without torch.
`transformers` is a runtime dependency of axjax (tokenizers, configs) and is imported freely.

`AXJAX_TEST_HIDE_TORCH=1 python -m pytest ...` runs the tests as on a machine without PyTorch: every import
finder answers "not found" for torch. (Setting sys.modules["torch"] = None is not the same: scipy's array-API
helpers read that entry whenever the key exists, so importing scikit-learn fails.)
"""

import gc
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _HideTorch:
  """Wraps one import finder so that it never finds torch or its submodules."""

  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    if name == "torch" or name.startswith("torch."):
      return None
    find = getattr(self.finder, "find_spec", None)
    return find(name, path, target) if find else None

  def __getattr__(self, attr):
    return getattr(self.finder, attr)


if os.environ.get("AXJAX_TEST_HIDE_TORCH") == "1":
  if "torch" in sys.modules:
    raise RuntimeError("AXJAX_TEST_HIDE_TORCH=1, but torch was imported before tests/conftest.py")
  sys.meta_path[:] = [_HideTorch(f) for f in sys.meta_path]

import jax
import numpy as np
import pytest

import transformers

import axjax

# The parity tests (against transformers, PyTorch and numpy) hold at full float32 matmul precision. That is the
# CPU's only mode; on a GPU or TPU JAX's default would be TF32 or bf16 passes, which the tolerances do not cover.
jax.config.update("jax_default_matmul_precision", "highest")

@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops each test module's compiled programs when it ends: the suite compiles hundreds in one process, and
  holding them all made XLA's CPU compiler crash (SIGSEGV) late in a full run."""
  yield
  jax.clear_caches()
  gc.collect()


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=7, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
WINDOW = 8  # shorter than the test sequences, so sliding layers really slide


def tiny_hf_config(model_type: str, gguf_representable: bool = False):
  """A tiny HF config of each family; Gemma 3 has the 5-local/1-global pattern and linear RoPE scaling.

  GGUF files cannot express a query scale other than head_dim or linear RoPE scaling, so the
  `gguf_representable` variants use head_dim and plain RoPE.
  """
  if model_type == "gemma":
    return transformers.GemmaConfig(**TINY)
  if model_type == "gemma2":
    return transformers.Gemma2Config(**TINY, sliding_window=WINDOW, attn_logit_softcapping=50.0,
                                      final_logit_softcapping=30.0,
                                      query_pre_attn_scalar=TINY["head_dim"] if gguf_representable else 24)
  global_rope = {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
  if gguf_representable:
    global_rope = {"rope_type": "default", "rope_theta": 1e6}
  return transformers.Gemma3TextConfig(
      **TINY, sliding_window=WINDOW, query_pre_attn_scalar=16,
      rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                       "full_attention": global_rope})


def tiny_hf_model(model_type: str, gguf_representable: bool = False):
  """A random float32 HF model; norm weights are randomised too so the (1 + w) convention is exercised.

  Skips the calling test when PyTorch is not installed.
  """
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  config = tiny_hf_config(model_type, gguf_representable)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  model = model.float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.normal_(0.0, 0.5)
  return model


@pytest.fixture(scope="session", params=["gemma", "gemma2", "gemma3"])
def tiny_checkpoint(request, tmp_path_factory):
  """(HF model, folder) for each family, saved as sharded safetensors with an index like real checkpoints."""
  model = tiny_hf_model(request.param)
  folder = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(folder, max_shard_size="40KB")
  return model, str(folder)


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory):
  model = tiny_hf_model("gemma3")
  folder = tmp_path_factory.mktemp("gemma3_single")
  model.save_pretrained(folder)
  return model, str(folder)


@pytest.fixture(scope="session")
def embedded():
  """The embedded Gemma 3 270M in float32, loaded once for the whole session."""
  return axjax.load(axjax.EMBEDDED_MODEL)


def padded_batch(rng: np.random.Generator, vocab: int, lengths, width: int):
  """Random token ids [B, width], left-padded to the given real lengths, and the mask."""
  ids = rng.integers(0, vocab, (len(lengths), width)).astype(np.int32)
  mask = np.zeros((len(lengths), width), bool)
  for i, n in enumerate(lengths):
    mask[i, width - n:] = True
  return ids, mask


def right_padded_batch(rng: np.random.Generator, vocab: int, lengths, width: int, pad: int = 0):
  """Random non-pad token ids [B, width] right-padded with `pad` after the given real lengths (AxBench's
  batches), and the mask."""
  ids = rng.integers(1, vocab, (len(lengths), width)).astype(np.int32)
  mask = np.arange(width)[None] < np.asarray(lengths)[:, None]
  ids[~mask] = pad
  return ids, mask


@pytest.fixture(scope="session")
def tiny_with_tokenizer(tmp_path_factory):
  """A tiny random Gemma 3 with the real 262k vocabulary and the embedded model's tokenizer: fast CLI runs."""
  torch = pytest.importorskip("torch")
  from axjax.loading.load import embedded_gguf_path
  from axjax.loading.tokenizer import gguf_tokenizer

  tokenizer = gguf_tokenizer(embedded_gguf_path())
  config = tiny_hf_config("gemma3").to_dict()
  config.update(vocab_size=len(tokenizer), num_hidden_layers=4, sliding_window=512)
  config.pop("layer_types", None)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(transformers.Gemma3TextConfig(**config))
  folder = tmp_path_factory.mktemp("tiny_tokenizer")
  model.save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return str(folder)


@pytest.fixture
def torch():
  """PyTorch on one thread for a test (its reference models are tiny: more threads only contend for the CPU)."""
  torch = pytest.importorskip("torch")
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield torch
  torch.set_num_threads(threads)
