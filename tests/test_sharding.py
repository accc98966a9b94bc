"""Runs on 8 simulated CPU devices equal runs on one: concepts (and eval texts, and steered rows) split over
the devices, and the frozen model split 2-way over a model axis.

The device count is fixed when JAX starts, so the check runs in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=8. XLA's concurrency-optimised CPU scheduler is turned off
there: with it, simulated devices can start their collectives in different orders and wait on each other for
ever (seen with the pooled SSV step on a concepts:4,model:2 mesh; the same program runs with it off).
"""

SIMULATED_DEVICES = "--xla_force_host_platform_device_count=8 --xla_cpu_enable_concurrency_optimized_scheduler=false"

import json
import os
import subprocess
import sys

import pytest

from axjax import sharding
from axjax.errors import AxjaxError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys, tempfile
import jax, numpy as np
import axjax
from axjax import sharding
from axjax.data.axbench_format import read_axbench
from axjax.methods import detection_run, fit, joint_training

assert len(jax.devices()) == 8, jax.devices()
jax.config.update("jax_default_matmul_precision", "highest")
placed = []  # (devices holding the trained weights, their padded concept count) of every compiled step
real_fitting = joint_training._fitting_step
def recording(cfg, loss_fns, params, *args):
  placed.append((len(params["w"].sharding.device_set), params["w"].shape[0]))
  return real_fitting(cfg, loss_fns, params, *args)
joint_training._fitting_step = recording

model = axjax.load(sys.argv[1])
data = read_axbench("concept10/prod_2b_l20_v1", max_concepts=3)
methods = ["DiffMean", "LinearProbe", "ReFT-r1", "SSV"]
short = {m: {"n_epochs": "1"} for m in methods[1:]}
runs = {}
for label, mesh in [("one", sharding.make_mesh(devices=jax.devices()[:1])), ("concepts8", sharding.make_mesh()),
                    ("concepts4_model2", sharding.make_mesh("concepts:4,model:2"))]:
  cache = fit.ActivationCache(model, data, layer=1, max_examples=8, mesh=mesh)
  reports, dictionaries = detection_run.run_detection(cache, methods, tempfile.mkdtemp(), overrides=short, seed=0,
                                                      imbalance_factor=None, log=lambda line: None)
  runs[label] = {m: (dictionaries[m].weights, dictionaries[m].max_activations,
                     [c["roc"]["roc_auc"] for c in reports[m]["concepts"]]) for m in methods}
out = {"placed": placed, "diffs": {}}
for label in ("concepts8", "concepts4_model2"):
  for m in methods:
    (w1, a1, r1), (w, a, r) = runs["one"][m], runs[label][m]
    out["diffs"][f"{label}/{m}"] = {"weights": float(np.abs(w - w1).max() / np.abs(w1).max()),
                                    "max_act": float(np.abs(a - a1).max() / np.abs(a1).max()),
                                    "auroc": float(np.abs(np.subtract(r, r1)).max())}
from axjax.steering_eval.generate_rows import generate_rows
from axjax.steering_eval.protocol import SteeringProtocol
from axjax.steering_eval.rows import steering_rows
protocol = SteeringProtocol(factors=(0.0, 40.0), instructions_per_concept=2, select_count=1, max_new_tokens=6)
rows = steering_rows(["A"], [(0, "cats"), (1, "rain")], ["Name a colour.", "Count to three.", "Hi"], protocol)
vectors = np.random.default_rng(0).normal(size=(len(rows), model.config.hidden_size)).astype(np.float32)
made = {}
for label, mesh in [("one", sharding.make_mesh(devices=jax.devices()[:1])),
                    ("concepts4_model2", sharding.make_mesh("concepts:4,model:2"))]:
  made[label] = generate_rows(model, rows, vectors, rows["factor"].to_numpy(np.float32), layer=1, protocol=protocol,
                              seed=3, batch_size=4, shard_dir=tempfile.mkdtemp(), mesh=mesh,
                              params=sharding.place_frozen(model.params, mesh))
out["generations_equal"] = made["one"]["generation"].tolist() == made["concepts4_model2"]["generation"].tolist()
out["rows"] = len(made["one"])
print("RESULT " + json.dumps(out))
"""


def test_eight_devices_give_the_results_of_one(tiny_with_tokenizer):
  env = dict(os.environ, XLA_FLAGS=SIMULATED_DEVICES, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  result = subprocess.run([sys.executable, "-c", SCRIPT, tiny_with_tokenizer], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
  found = json.loads(line[len("RESULT "):])
  # Per trained method: one device holds 3 concepts; the 8-way concept axis pads them to 8; the 4-way to 4.
  assert found["placed"] == [[1, 3]] * 3 + [[8, 8]] * 3 + [[8, 4]] * 3
  assert found["generations_equal"] and found["rows"] == 8  # steered rows split 4 ways, the model 2 ways
  for name, diff in found["diffs"].items():
    assert diff["weights"] <= 1e-5 and diff["max_act"] <= 1e-4 and diff["auroc"] <= 1e-6, (name, diff)


def test_mesh_flags_are_checked():
  devices = ["d"] * 8  # make_mesh only counts and reshapes them
  assert sharding.make_mesh("concepts:4,model:2", devices).shape == {"concepts": 4, "model": 2}
  assert sharding.make_mesh("model:2", devices).shape == {"concepts": 4, "model": 2}
  assert sharding.make_mesh(None, devices).shape == {"concepts": 8, "model": 1}
  for spec in ("concepts:3,model:2", "concepts:3"):
    with pytest.raises(AxjaxError, match="does not fit the 8 devices present"):
      sharding.make_mesh(spec, devices)
  with pytest.raises(AxjaxError, match="is not of the form"):
    sharding.make_mesh("experts:2", devices)
