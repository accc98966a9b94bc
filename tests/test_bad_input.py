"""Bad input gets one clear sentence naming the problem."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import axjax
from axjax.errors import AxjaxError, CheckpointError, UnsupportedModelError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tiny_gemma3):
  return axjax.load(tiny_gemma3[1])


def test_missing_path():
  with pytest.raises(CheckpointError, match=r"no model at /no/such/model: give an HF checkpoint folder"):
    axjax.load("/no/such/model")


def test_folder_without_config(tmp_path):
  with pytest.raises(CheckpointError, match=r"has no config.json: it is not a Hugging Face checkpoint folder"):
    axjax.load(str(tmp_path))


def test_unsupported_architecture(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
  with pytest.raises(UnsupportedModelError, match=r"unsupported architecture 'LlamaForCausalLM'.*Gemma 1, 2 and 3"):
    axjax.load(str(tmp_path))


def test_truncated_safetensors(tiny_gemma3, tmp_path):
  folder = tmp_path / "ckpt"
  shutil.copytree(tiny_gemma3[1], folder)
  weights = folder / "model.safetensors"
  size = weights.stat().st_size
  with open(weights, "r+b") as f:
    f.truncate(size - 1000)
  with pytest.raises(CheckpointError, match=r"model.safetensors is truncated: its tensors need \d+ bytes but the file has"):
    axjax.load(str(folder))


def test_not_a_gguf_file(tmp_path):
  fake = tmp_path / "model.gguf"
  fake.write_bytes(b"not really a gguf file")
  with pytest.raises(CheckpointError, match=r"is not a GGUF file"):
    axjax.load(str(fake))


def test_unknown_dtype(tiny_gemma3):
  with pytest.raises(AxjaxError, match=r"unknown dtype 'float16': choose one of float32, bfloat16"):
    axjax.load(tiny_gemma3[1], dtype="float16")


def test_layer_out_of_range(tiny):
  ids = np.zeros((1, 4), np.int32)
  with pytest.raises(AxjaxError, match=r"layer 7 is out of range: this model has layers 0..6"):
    axjax.forward(tiny.params, tiny.config, ids, stop_after_layer=7)
  with pytest.raises(AxjaxError, match=r"layer -1 is out of range"):
    axjax.forward(tiny.params, tiny.config, ids, intervention=axjax.steering(-1),
                  intervention_params=axjax.steering_params(np.zeros(64), 1.0))


def test_token_ids_outside_vocabulary(tiny):
  with pytest.raises(AxjaxError, match=r"token ids must lie in \[0, 128\); got values from 0 to 128"):
    axjax.forward(tiny.params, tiny.config, np.array([[0, 5, 128]]))


def test_intervention_of_the_wrong_width(tiny):
  with pytest.raises(AxjaxError, match=r"intervention vector has width 32 but the model's hidden size is 64"):
    axjax.forward(tiny.params, tiny.config, np.zeros((1, 3), np.int32), intervention=axjax.steering(2),
                  intervention_params=axjax.steering_params(np.zeros(32), 1.0))


def test_generate_cli_reports_bad_vector_in_one_sentence(tmp_path):
  vector = tmp_path / "v.npy"
  np.save(vector, np.zeros((2, 3)))
  result = subprocess.run([sys.executable, "-m", "experiments.generate", f"--vector_file={vector}", "--layer=3"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {vector} holds an array of shape (2, 3); a steering vector has shape [d]")
