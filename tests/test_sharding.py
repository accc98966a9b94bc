"""Concepts split over 8 simulated CPU devices train to the same dictionaries as on one device.

The device count is fixed when JAX starts, so the check runs in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import functools, json, sys
import jax, numpy as np
import axjax
from axjax.data.axbench_format import read_axbench
from axjax.methods import fit, joint_training
from axjax.methods.joint_training import concept_mesh

placed = []  # (devices holding the trained weights, their padded shape) of every compiled step
real_fitting = joint_training._fitting_step
def recording(cfg, loss_fns, params, *args):
  placed.append((len(params["w"].sharding.device_set), params["w"].shape[0]))
  return real_fitting(cfg, loss_fns, params, *args)
joint_training._fitting_step = recording

assert len(jax.devices()) == 8, jax.devices()
jax.config.update("jax_default_matmul_precision", "highest")
model = axjax.load(sys.argv[1])
cache = fit.ActivationCache(model, read_axbench("concept10/prod_2b_l20_v1", max_concepts=3), layer=1, max_examples=8)
out = {}
real = fit.train_jointly
for name in ["LinearProbe", "ReFT-r1", "SSV"]:
  runs = {}
  for devices in (1, 8):
    fit.train_jointly = functools.partial(real, mesh=concept_mesh(jax.devices()[:devices]))
    result = fit.fit_method(name, cache, overrides={"n_epochs": 1})
    runs[devices] = (result.dictionary.weights, result.record["loss"].to_numpy())
  out[name] = {"weights": float(np.abs(runs[1][0] - runs[8][0]).max()),
               "loss": float(np.abs(runs[1][1] - runs[8][1]).max()),
               "scale": float(np.abs(runs[1][0]).max()), "rows": len(runs[8][1])}
out["placed"] = placed
print("RESULT " + json.dumps(out))
"""


def test_eight_devices_train_the_same_dictionaries_as_one(tiny_with_tokenizer):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  result = subprocess.run([sys.executable, "-c", SCRIPT, tiny_with_tokenizer], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
  found = json.loads(line[len("RESULT "):])
  assert found.pop("placed") == [[1, 3], [8, 8]] * 3  # one device: 3 concepts; eight: padded to 8, split
  for name, diff in found.items():
    assert diff["rows"] > 0 and diff["scale"] > 0, name
    assert diff["weights"] <= 1e-5 * diff["scale"], (name, diff)  # 3 concepts padded to 8, one per device
    assert diff["loss"] <= 1e-4, (name, diff)
