"""A multi-host job on one machine: two JAX processes (4 simulated CPU devices each, talking through gloo) train,
score and steer together, writing into one folder, and get what one process with 8 devices gets. Each process
trains its own share of the concept chunks on its own devices, computing activations for those concepts only;
scoring and steering run on the mesh of all 8 devices (the same arithmetic as one process; tests/test_sharding.py
shows 8 devices equal 1). Shared results are written once, by process 0."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments import scale_flags
from tests.test_sharding import SIMULATED_DEVICES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

JOB = r"""
import json, os, sys
model_dir, output, *join = sys.argv[1:]
from axjax import processes
if join:
  processes.initialize(join[0], 2, int(join[1]))
import jax, numpy as np
import axjax
from axjax import sharding
from axjax.data.axbench_format import read_axbench
from axjax.methods import detection_run, fit
from axjax.steering_eval.generate_rows import generate_rows
from axjax.steering_eval.protocol import SteeringProtocol
from axjax.steering_eval.rows import steering_rows

assert len(jax.devices()) == 8
mesh = sharding.make_mesh()
model = axjax.load(model_dir)
data = read_axbench("concept10/prod_2b_l20_v1", max_concepts=3)
methods = ["DiffMean", "SSV"]  # ReFT-r1 trains through SSV's path (tests/test_sharding.py has both)
computed = {}  # per example set: how many rows this process computed activations for
record = lambda stage, done, total: computed.__setitem__(stage, total) if stage.startswith("activations") else None
cache = fit.ActivationCache(model, data, layer=1, progress=record, max_examples=8, mesh=mesh)
reports, dictionaries = detection_run.run_detection(cache, methods, os.path.join(output, "detect"), seed=0,
                                         overrides={m: {"n_epochs": "1"} for m in methods[1:]},
                                         imbalance_factor=None, log=lambda line: None)
protocol = SteeringProtocol(factors=(0.0, 40.0), instructions_per_concept=2, select_count=1, max_new_tokens=6)
rows = steering_rows(["A"], [(0, "cats"), (1, "rain")], ["Name a colour.", "Count to three.", "Hi"], protocol)
vectors = np.random.default_rng(0).normal(size=(len(rows), model.config.hidden_size)).astype(np.float32)
made = generate_rows(model, rows, vectors, rows["factor"].to_numpy(np.float32), layer=1, protocol=protocol, seed=3,
                     batch_size=4, shard_dir=os.path.join(output, "shards"), mesh=mesh,
                     params=sharding.place_frozen(model.params, mesh))
with open(os.path.join(output, f"rows-{jax.process_index()}.json"), "w") as f:
  json.dump(computed, f)
if processes.is_writer():
  out = {m: {"weights": dictionaries[m].weights.tolist(),
             "auroc": [c["roc"]["roc_auc"] for c in reports[m]["concepts"]]} for m in methods}
  out["generations"] = made["generation"].tolist()
  out["perplexity"] = made["perplexity"].tolist()
  with open(os.path.join(output, "result.json"), "w") as f:
    json.dump(out, f)
"""


def _job(model: str, output: str, *join: str, devices: int) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
             XLA_FLAGS=SIMULATED_DEVICES.replace("count=8", f"count={devices}"),
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  return subprocess.Popen([sys.executable, "-c", JOB, model, output, *join], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_results_of_one(tiny_with_tokenizer, tmp_path):
  address = f"localhost:{_free_port()}"
  jobs = [_job(tiny_with_tokenizer, str(tmp_path / "two"), address, str(i), devices=4) for i in range(2)]
  jobs.append(_job(tiny_with_tokenizer, str(tmp_path / "one"), devices=8))
  for job in jobs:
    log = job.communicate(timeout=1200)[0]
    assert job.returncode == 0, log[-3000:]
  one, two = (json.loads((tmp_path / label / "result.json").read_text()) for label in ("one", "two"))
  for name in ("DiffMean", "SSV"):
    w1 = np.asarray(one[name]["weights"])
    assert w1.shape[0] == 3
    np.testing.assert_allclose(two[name]["weights"], w1, atol=1e-6 * np.abs(w1).max(), err_msg=name)
    np.testing.assert_allclose(two[name]["auroc"], one[name]["auroc"], atol=1e-6, err_msg=name)
  assert len(one["generations"]) == 2 * 2 * 2 and two["generations"] == one["generations"]
  np.testing.assert_allclose(two["perplexity"], one["perplexity"], rtol=1e-5)
  # Each process computed the activations of its own concepts only: their positives (one concept's each) are
  # split between the two exactly, the shared negatives are computed by both.
  counts = [json.loads((tmp_path / "two" / f"rows-{i}.json").read_text()) for i in range(2)]
  whole = json.loads((tmp_path / "one" / "rows-0.json").read_text())
  assert counts[0]["activations (lm_positive)"] + counts[1]["activations (lm_positive)"] == \
      whole["activations (lm_positive)"]
  assert all(0 < c["activations (binarized)"] < whole["activations (binarized)"] for c in counts)
  # Process 0 wrote each shared file once and left no staging folder behind.
  assert not [p for p in os.listdir(tmp_path / "two" / "detect" / "dictionaries") if p.startswith(".")]


@pytest.mark.parametrize("flags, message", [
    (["--coordinator_address=localhost:1"], "--coordinator_address, --num_processes and --process_id go together"),
    (["--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2"], "--process_id=2 is not in 0..1"),
])
def test_process_flags_are_checked(flags, message):
  from absl import flags as absl_flags
  from axjax.errors import AxjaxError
  absl_flags.FLAGS.unparse_flags()
  absl_flags.FLAGS(["prog", *flags])
  try:
    with pytest.raises(AxjaxError, match=message):
      scale_flags.mesh()
  finally:
    absl_flags.FLAGS.unparse_flags()
