"""Time jax.value_and_grad in h of the mean chunked next-token NLL: the old checkpointed scan vs `token_nll`.

The old implementation (reproduced below for comparison only) scanned the vocabulary under jax.checkpoint, so
the gradient cost three [N, d] x [d, V] matmuls (logits, recomputed logits, gradient); `token_nll`'s custom VJP
costs two (logits and p @ W, both in the forward pass). Defaults are the embedded Gemma 3 270M's shapes.

    python benchmarks/lm_loss_speed.py [--n 1024] [--vocab 262144] [--chunk 16384] [--repeats 3] [--softcap 30]
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import axjax  # noqa: E402
from axjax.model.layers import RMSNorm  # noqa: E402
from axjax.model.lm_loss import token_nll  # noqa: E402


def old_token_nll(params, config, h, targets, chunk=16_384):
  """The previous implementation: a jax.checkpoint-ed scan differentiated by JAX (3 big matmuls with grad)."""
  x = RMSNorm(config.rms_norm_eps).apply({"params": params["final_norm"]}, h)
  table = params["embed"]
  vocab = table.shape[0]
  n_chunks = -(-vocab // chunk)
  padded = jnp.pad(table, ((0, n_chunks * chunk - vocab), (0, 0))).reshape(n_chunks, chunk, -1)
  cap = config.final_logit_softcap

  def capped(logits):
    logits = logits.astype(jnp.float32)
    return jnp.tanh(logits / cap) * cap if cap else logits

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk_lse(carry, xs):
    rows, index = xs
    logits = capped(x @ rows.T)
    valid = index * chunk + jnp.arange(chunk) < vocab
    logits = jnp.where(valid[None], logits, -jnp.inf)
    return jnp.logaddexp(carry, jax.nn.logsumexp(logits, axis=-1)), None

  init = jnp.full((h.shape[0],), -jnp.inf, jnp.float32)
  lse, _ = jax.lax.scan(chunk_lse, init, (padded, jnp.arange(n_chunks)))
  target_logit = capped(jnp.einsum("nd,nd->n", x, jnp.take(table, targets, axis=0)))
  return lse - target_logit


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=1024)
  parser.add_argument("--hidden", type=int, default=640)
  parser.add_argument("--vocab", type=int, default=262_144)
  parser.add_argument("--chunk", type=int, default=16_384)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--softcap", type=float, default=None, help="final logit soft-cap (Gemma 2: 30)")
  args = parser.parse_args()

  config = axjax.PRESETS["gemma-3-270m"].replace(vocab_size=args.vocab, hidden_size=args.hidden,
                                                 final_logit_softcap=args.softcap)
  k = jax.random.split(jax.random.key(0), 4)
  params = {"final_norm": {"scale": jax.random.normal(k[0], (args.hidden,)) * 0.3},
            "embed": jax.random.normal(k[1], (args.vocab, args.hidden), jnp.float32) * 0.5}
  h = jax.random.normal(k[2], (args.n, args.hidden), jnp.float32) * 5.0
  targets = jax.random.randint(k[3], (args.n,), 0, args.vocab)

  def make(fn):
    loss = lambda h, params, targets: fn(params, config, h, targets, chunk=args.chunk).mean()
    return jax.jit(jax.value_and_grad(loss))

  steps = {"old": make(old_token_nll), "new": make(token_nll)}
  results = {}
  for name, step in steps.items():  # warm-up: compile and run once
    start = time.perf_counter()
    results[name] = jax.block_until_ready(step(h, params, targets))
    print(f"{name}: first call (compile + run) {time.perf_counter() - start:.2f} s", flush=True)
  (v_old, g_old), (v_new, g_new) = results["old"], results["new"]
  print(f"agreement: |value| diff {abs(float(v_old) - float(v_new)):.2e}, "
        f"grad max rel diff {float(jnp.abs(g_old - g_new).max() / jnp.abs(g_old).max()):.2e}")

  times = {"old": [], "new": []}
  for _ in range(args.repeats):  # alternate, so background load hits both alike
    for name, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(h, params, targets))
      times[name].append(time.perf_counter() - start)
  ratios = [o / n for o, n in zip(times["old"], times["new"])]
  print(f"N={args.n} d={args.hidden} V={args.vocab} chunk={args.chunk} softcap={args.softcap} float32, "
        f"{jax.devices()[0].platform}")
  for name in times:
    print(f"{name}: " + ", ".join(f"{t:.2f}" for t in times[name]) + f" s  (median {np.median(times[name]):.2f} s)")
  print(f"median ratio old/new: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
  main()
