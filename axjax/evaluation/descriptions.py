"""Output-centric descriptions of concept dictionaries: what each rank-1 direction does to the model's output.

Two views per concept (after Gur-Arieh et al., "Enhancing automated interpretability with output-centric feature
descriptions"):
- vocabulary projection (logit lens): the direction read through the final norm's (1 + scale) and the tied
  unembedding, exactly as AxBench's `get_logits` (its LsReFT `top_logits` / `neg_logits`): each token's scaled
  unembedding vector is centred over the model width, and the top and bottom k tokens are kept;
- steering effect: the tokens whose next-token probability after a few neutral prompts rises or falls most,
  averaged over the prompts, when the concept's vector is added after the dictionary's layer at every real
  position (as AxBench steers), against the unsteered model.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from axjax import atomic_files, processes
from axjax.dictionary.store import Dictionary, check_compatible
from axjax.errors import AxjaxError
from axjax.generation.text import encode_prompts, left_pad
from axjax.loading.load import LoadedModel
from axjax.model.config import GemmaConfig
from axjax.model.interventions import steering, steering_params
from axjax.model.transformer import forward
from axjax.steering_eval.rows import steering_magnitude

# Plain-text openings (after BOS, no chat turn) that favour no topic: the steering view measures how a concept
# moves the next token away from an ordinary continuation, so the prompts should invite many continuations.
NEUTRAL_PROMPTS = (
    "The",
    "I think that",
    "Here is what happened next:",
    "She looked at the",
    "It was a day like any other, and",
    "One thing to know is",
    "We talked for a while about",
    "In the end, the",
)
FILE = "descriptions.json"


class TopTokens(NamedTuple):
  """The k chosen tokens per concept, best first: ids [C, k] int32 and their values [C, k] float32."""

  ids: np.ndarray
  values: np.ndarray


def _check_vectors(weights: Any, config: GemmaConfig) -> np.ndarray:
  """`weights` as float32 [C, d] for a model of width d, or one clear error."""
  weights = np.asarray(weights, np.float32)
  if weights.ndim != 2 or weights.shape[0] == 0 or weights.shape[1] != config.hidden_size:
    raise AxjaxError(f"concept vectors must have shape [C, {config.hidden_size}] for this model, not "
                     f"{weights.shape}")
  return weights


def _check_k(k: int, vocab_size: int) -> None:
  if not isinstance(k, int) or not 0 < k <= vocab_size:
    raise AxjaxError(f"k must be an integer in 1..{vocab_size} (the vocabulary size), not {k!r}")


@functools.partial(jax.jit, static_argnums=(2,))
def _chunk_extremes(read: jax.Array, table: jax.Array, k: int):
  """Top and bottom k of read [C, d] @ table [V', d].T, with their column indices."""
  scores = jnp.einsum("cd,vd->cv", read, table.astype(jnp.float32))
  high, high_ids = jax.lax.top_k(scores, k)
  low, low_ids = jax.lax.top_k(-scores, k)
  return high, high_ids, -low, low_ids


def _merge(values: list[np.ndarray], ids: list[np.ndarray], k: int, largest: bool) -> TopTokens:
  """The best k of per-chunk candidates (values and global ids [C, k'] each)."""
  values, ids = np.concatenate(values, axis=1), np.concatenate(ids, axis=1)
  order = np.argsort(-values if largest else values, axis=1, kind="stable")[:, :k]
  return TopTokens(np.take_along_axis(ids, order, 1).astype(np.int32), np.take_along_axis(values, order, 1))


def vocabulary_projection(params: dict[str, Any], config: GemmaConfig, weights: Any, k: int = 10,
                          vocab_chunk: int = 32_768) -> tuple[TopTokens, TopTokens]:
  """(promoted, suppressed): per concept row of `weights` [C, d], the k tokens of highest and lowest score
  w . c_v, where c_v is token v's unembedding times (1 + final norm scale), centred over the d coordinates.

  Centring each c_v over d scores the same as centring w over d, so the [V, d] table is never copied or
  centred: one [C, d] x [d, V] matmul, in vocabulary chunks of `vocab_chunk` tokens to bound memory.
  """
  weights = _check_vectors(weights, config)
  _check_k(k, config.vocab_size)
  if not isinstance(vocab_chunk, int) or vocab_chunk < 1:
    raise AxjaxError(f"vocab_chunk must be a positive integer, not {vocab_chunk!r}")
  centred = weights - weights.mean(axis=1, keepdims=True)
  read = jnp.asarray(centred) * (1.0 + params["final_norm"]["scale"].astype(jnp.float32))
  parts = []
  for start in range(0, config.vocab_size, vocab_chunk):
    table = params["embed"][start:start + vocab_chunk]
    high, high_ids, low, low_ids = map(processes.to_host, _chunk_extremes(read, table, min(k, table.shape[0])))
    parts.append((high, high_ids + start, low, low_ids + start))
  high, high_ids, low, low_ids = (list(p) for p in zip(*parts))
  return _merge(high, high_ids, k, largest=True), _merge(low, low_ids, k, largest=False)


@jax.jit
def _mean_probs(logits: jax.Array) -> jax.Array:
  """Next-token probabilities from logits [B, 1, V], averaged over the B prompts: [V]."""
  return jax.nn.softmax(logits[:, 0], axis=-1).mean(axis=0)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _shift_extremes(logits: jax.Array, base: jax.Array, prompts: int, k: int):
  """Rows [n * prompts, 1, V] of steered logits: per concept, the top k rises and falls of the mean probability."""
  chex.assert_rank(logits, 3)
  probs = jax.nn.softmax(logits[:, 0], axis=-1)
  delta = probs.reshape(-1, prompts, probs.shape[-1]).mean(axis=1) - base
  up, up_ids = jax.lax.top_k(delta, k)
  down, down_ids = jax.lax.top_k(-delta, k)
  return up, up_ids, -down, down_ids


def steering_effects(params: dict[str, Any], config: GemmaConfig, weights: Any, layer: int, strength: Any,
                     prompt_ids: np.ndarray, prompt_mask: np.ndarray, k: int = 10,
                     rows_per_batch: int = 64) -> tuple[TopTokens, TopTokens]:
  """(raises, lowers): per concept, the k tokens whose next-token probability at the prompts' last real position,
  averaged over the prompts, rises (falls) most when `strength * w` is added after `layer`; values are the
  mean probability changes against the unsteered model.

  `strength` is a scalar or one value per concept (AxBench's factor times max activation). Every (concept,
  prompt) pair is one batch row with its own vector; batches hold whole concepts, about `rows_per_batch` rows.
  """
  weights = _check_vectors(weights, config)
  _check_k(k, config.vocab_size)
  config.check_layer(layer)
  count = weights.shape[0]
  strength = np.asarray(strength, np.float32)
  if strength.shape not in ((), (count,)) or not np.isfinite(strength).all():
    raise AxjaxError(f"strength must be one finite number or one per concept ({count}), not shape {strength.shape}")
  strength = np.broadcast_to(strength, (count,))
  prompt_ids, prompt_mask = np.asarray(prompt_ids, np.int32), np.asarray(prompt_mask, bool)
  chex.assert_rank(prompt_ids, 2)
  chex.assert_equal_shape([prompt_ids, prompt_mask])
  if prompt_ids.shape[0] == 0 or not prompt_mask.any(axis=1).all():
    raise AxjaxError("every prompt needs at least one real token, and there must be at least one prompt")
  prompts, width = prompt_ids.shape
  last = (width - 1 - np.argmax(prompt_mask[:, ::-1], axis=1))[:, None].astype(np.int32)  # [P, 1]
  base = _mean_probs(forward(params, config, prompt_ids, prompt_mask, logit_positions=last).logits)
  per_batch = min(max(1, rows_per_batch // prompts), count)
  parts = []
  for start in range(0, count, per_batch):
    rows = np.minimum(np.arange(start, start + per_batch), count - 1)  # the last batch repeats its last concept
    vectors, strengths = np.repeat(weights[rows], prompts, axis=0), np.repeat(strength[rows], prompts)
    out = forward(params, config, np.tile(prompt_ids, (per_batch, 1)), np.tile(prompt_mask, (per_batch, 1)),
                  intervention=steering(layer), intervention_params=steering_params(vectors, strengths),
                  logit_positions=np.tile(last, (per_batch, 1)))
    kept = min(per_batch, count - start)
    parts.append([processes.to_host(a)[:kept] for a in _shift_extremes(out.logits, base, prompts, k)])
  up, up_ids, down, down_ids = (np.concatenate(p) for p in zip(*parts))
  return TopTokens(up_ids, up), TopTokens(down_ids, down)


def _entries(tokenizer, top: TopTokens, row: int) -> list[dict[str, Any]]:
  return [{"token": tokenizer.decode([int(i)]), "id": int(i), "value": float(v)}
          for i, v in zip(top.ids[row], top.values[row])]


def describe(model: LoadedModel, dictionary: Dictionary, strength: Any, *, k: int = 10,
             prompts: Sequence[str] = NEUTRAL_PROMPTS, rows_per_batch: int = 64) -> dict[str, Any]:
  """The JSON-ready descriptions of every concept of `dictionary` on `model` (see the module docstring).

  Per concept: concept_id, concept, strength, and lists of {token, id, value} for promoted / suppressed (value:
  projection score) and steering_raises / steering_lowers (value: mean change of next-token probability).
  """
  check_compatible(dictionary, model.config, dictionary.layer)
  if model.tokenizer is None:
    raise AxjaxError(f"{model.source} has no tokenizer, so its tokens cannot be described")
  if not prompts:
    raise AxjaxError("the steering description needs at least one prompt")
  tok = model.tokenizer
  ids, mask = left_pad(encode_prompts(tok, prompts, chat=False), tok.pad_token_id or 0, bucket=8)
  vectors = dictionary.steering_vectors()  # what steering adds (an SAE feature's decoder row, not its encoder)
  promoted, suppressed = vocabulary_projection(model.params, model.config, vectors, k)
  raises, lowers = steering_effects(model.params, model.config, vectors, dictionary.layer, strength,
                                    ids, mask, k, rows_per_batch)
  strengths = np.broadcast_to(np.asarray(strength, np.float32), (dictionary.num_concepts,))
  concepts = [{"concept_id": cid, "concept": name, "strength": float(strengths[row]),
               "promoted": _entries(tok, promoted, row), "suppressed": _entries(tok, suppressed, row),
               "steering_raises": _entries(tok, raises, row), "steering_lowers": _entries(tok, lowers, row)}
              for row, (cid, name) in enumerate(zip(dictionary.concept_ids, dictionary.concept_names))]
  return {"method": dictionary.method, "model": dictionary.model_name, "layer": dictionary.layer,
          "prompts": list(prompts), "concepts": concepts}


def describe_dictionaries(model: LoadedModel, dictionaries: Mapping[str, Dictionary]) -> list[dict[str, Any]]:
  """`describe` of every rank-1 dictionary, each concept steered at factor 1 of AxBench's strength rule (its max
  activation: `steering_magnitude`), the middle of AxBench's factor range. Methods without a direction (LoReFT,
  LoRA, BoW, prompting) have nothing to read through the unembedding and are left out."""
  return [describe(model, d, steering_magnitude(d.max_activations)) for d in dictionaries.values()
          if d.weights is not None]


def write_descriptions(output_dir: str, descriptions: Sequence[dict[str, Any]]) -> str:
  """Writes `describe` outputs (one per dictionary) to output_dir/descriptions.json atomically; returns its path."""
  path = os.path.join(output_dir, FILE)
  atomic_files.write_json(path, list(descriptions))
  return path


def _tokens(entries: list[dict[str, Any]], count: int) -> str:
  """The first `count` tokens as JSON strings (whitespace visible), safe in a Markdown table cell."""
  return ", ".join(json.dumps(e["token"], ensure_ascii=False) for e in entries[:count]).replace("|", "\\|")


def markdown_table(description: dict[str, Any], tokens: int = 5) -> str:
  """A Markdown section for a report: one row per concept, the first `tokens` tokens of each list."""
  lines = [f"### {description['method']} (layer {description['layer']})", "",
           "| concept | promoted (logit lens) | suppressed (logit lens) | raised by steering | lowered by steering |",
           "|---|---|---|---|---|"]
  for c in description["concepts"]:
    name = str(c["concept"]).replace("|", "\\|").replace("\n", " ")
    cells = [_tokens(c[key], tokens) for key in ("promoted", "suppressed", "steering_raises", "steering_lowers")]
    lines.append(f"| {c['concept_id']}: {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
