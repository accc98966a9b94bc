"""Runs the original AxBench with the model cut after the layer it reads, for methods that read nothing above it.

LinearProbe, DiffMean, PCA and LAT train and score on the output of `model.layers[L]` only; AxBench still runs
the layers above L and the 262k-way output layer on every batch, which is most of its CPU time. With
AXBENCH_TRUNCATE_LAYER=L set and this folder on PYTHONPATH, every `AutoModelForCausalLM.from_pretrained` keeps
layers 0..L and replaces the output layer with the identity, so layers 0..L and everything computed from their
output are unchanged. Not for LsReFT or any steering (their loss or output passes through the upper layers), and
not for timings (the timed races run AxBench unmodified).
"""

import os

_LAYER = os.environ.get("AXBENCH_TRUNCATE_LAYER")

if _LAYER is not None:
  import torch
  import transformers

  _from_pretrained = transformers.AutoModelForCausalLM.from_pretrained.__func__

  def _truncated(cls, *args, **kwargs):
    model = _from_pretrained(cls, *args, **kwargs)
    keep = int(_LAYER) + 1
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[:keep])
    model.lm_head = torch.nn.Identity()
    print(f"sitecustomize: kept layers 0..{keep - 1} of the model; output layer replaced by the identity")
    return model

  transformers.AutoModelForCausalLM.from_pretrained = classmethod(_truncated)
