"""ReFT-r1 training throughput: axjax jointly over concepts, axjax one concept at a time, and a PyTorch +
transformers reference trained the AxBench way (forward hook at layer L, one concept at a time, batch 6)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from axjax.data.axbench_format import AxbenchData
from axjax.loading.load import LoadedModel
from axjax.methods.fit import ActivationCache, fit_method
from axjax.methods.registry import hyperparameters, method


def axjax_seconds(model: LoadedModel, data: AxbenchData, layer: int, concepts: list[int], max_examples: int,
                  epochs: int, joint: bool) -> float:
  """Wall time of axjax's ReFT-r1 (activation pass included) for `concepts`, jointly or one by one."""
  groups = [tuple(concepts)] if joint else [(c,) for c in concepts]
  start = time.perf_counter()
  for group in groups:
    cache = ActivationCache(model, data, layer, concept_ids=group, max_examples=max_examples)
    fit_method("ReFT-r1", cache, overrides={"n_epochs": epochs})
  return time.perf_counter() - start


def _torch_concept(reference, ex, layer: int, hp: dict[str, Any], epochs: int, device) -> None:
  """One concept trained as AxBench's LsReFT does, with a forward hook editing model.layers[layer]'s output."""
  import torch

  d = reference.config.hidden_size
  w = torch.full((d,), 0.01, device=device, requires_grad=True)
  opt = torch.optim.AdamW([w], lr=hp["lr"], weight_decay=hp["weight_decay"])
  rows = np.flatnonzero(ex.row_valid[0])
  batch_size = hp["batch_size"]
  total = epochs * math.ceil(len(rows) / batch_size)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total))
  state: dict[str, Any] = {}

  def hook(module, inputs, output):
    h = output[0] if isinstance(output, tuple) else output
    where = state["where"]
    latent = torch.relu(h.float() @ w) * where  # the float32 latent of AxBench's float32 intervention
    top = torch.topk(latent.masked_fill(where == 0, -1.0), hp["topk"], dim=-1)
    magnitude = top.values.clamp(min=0).mean(-1)
    non_top = latent.scatter(-1, top.indices, 0.0)
    state["l1"] = (non_top.sum(-1) / (where.sum(-1) + 1e-7)).mean()
    h = (h + where[..., None] * magnitude[:, None, None] * w).to(h.dtype)
    return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

  handle = reference.model.layers[layer].register_forward_hook(hook)
  step = 0
  try:
    for epoch in range(epochs):
      order = np.random.default_rng(epoch).permutation(rows)
      for s in range(0, len(order), batch_size):
        shared = ex.index[0, order[s:s + batch_size]]
        tokens = torch.tensor(ex.tokens[shared], device=device, dtype=torch.long)
        mask = torch.tensor(ex.attention_mask[shared], device=device, dtype=torch.long)
        labels = torch.where(torch.tensor(ex.loss_mask[shared], device=device), tokens, -100)
        state["where"] = torch.tensor(ex.intervention_mask[shared], device=device, dtype=torch.float32)
        loss = reference(input_ids=tokens, attention_mask=mask, labels=labels).loss
        loss = loss + step / total * hp["coeff_latent_l1_loss"] * state["l1"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_([w], 1.0)
        with torch.no_grad():
          w /= w.norm() + 1e-8
          w.grad -= (w.grad @ w) * w
        opt.step()
        sched.step()
        opt.zero_grad()
        step += 1
  finally:
    handle.remove()


def torch_seconds(reference, model: LoadedModel, data: AxbenchData, layer: int, concepts: list[int],
                  max_examples: int, epochs: int, device) -> float:
  """Wall time of the PyTorch reference over `concepts`, one at a time."""
  from axjax.data.examples import lm_examples

  for p in reference.parameters():
    p.requires_grad_(False)
  hp = hyperparameters(method("ReFT-r1"), model.config, {"n_epochs": epochs})
  start = time.perf_counter()
  for concept in concepts:
    ex = lm_examples(data, model.tokenizer, concept_ids=[concept], train_on_negative=True, positions="all",
                     max_examples=max_examples)
    _torch_concept(reference, ex, layer, hp, epochs, device)
  return time.perf_counter() - start
