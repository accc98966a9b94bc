"""AxBench's two prompting baselines: PromptSteering (an LLM-written steering prompt before the instruction) and
PromptDetection (the target chat model rates each eval output for the concept, 0-2).

AxBench (`axbench/models/prompt.py`, `axbench/utils/dataset.py`): an LLM (gpt-4o-mini) writes one steering prompt
per concept from T_GENERATE_STEERING_PROMPT; its reply, stripped, replaces T_PROMPT_STEERING, which is used
when the reply is empty or no LLM is asked. The steered model then answers
`chat(" {prompt}\\n\\nQuestion: {instruction}")`, with no intervention and no factor. PromptDetection gives the
target model the judge's concept-relevance rubric on each example's output alone, samples up to 512 tokens and
parses the reply's `Rating:` (0-2, -1 when it cannot) as the example's score.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from axjax.data import chat_format
from axjax.data.axbench_format import AxbenchData
from axjax.dictionary.store import text_array
from axjax.errors import AxjaxError
from axjax.generation.sampling import SamplingConfig
from axjax.generation.text import generate_text
from axjax.judges import rubrics
from axjax.llm.openai_client import OpenAIClient
from axjax.loading.load import LoadedModel

# The two templates are AxBench's text, character for character (trailing spaces and the whitespace-only line
# included): stanfordnlp/axbench, axbench/utils/dataset.py at commit e9b8cd4783c983e350d78af76f3fb2b8b15fc7d3
# (unchanged since 8f87825, "Super hard prompt baseline"). Apache License 2.0, copyright the AxBench authors.
T_PROMPT_STEERING = """You must answer the question with content \
related to %s even if it is not related to the question or it does not make sense."""

T_GENERATE_STEERING_PROMPT = """Generate a prompt to guide a language \
model in producing responses. 

Objective: 
Direct the model to include content related to %s (the concept) in its responses. 
Ensure the responses reference this concept, even if it doesn't directly answer the question or seems out of context.
Optionally, provide in-context examples to reinforce this behavior.
        
Return only the final prompt without any additional text."""

FALLBACK = "fallback"  # the source of a steering prompt taken from T_PROMPT_STEERING
FAILED_RATING = -1.0  # AxBench's DEFAULT_RATING for a reply without a usable `Rating:`
AXBENCH_DETECTION_TOKENS = 512  # PromptDetection's eval_output_length


@dataclasses.dataclass(frozen=True)
class Writer:
  """An LLM that writes steering prompts (and generated data): `complete` maps user prompts to reply texts, one per
  prompt, in order; `complete(prompts, draw=k)`, where supported, gives the k-th independent reply (a retry).

  `name` labels the prompts it writes (e.g. "openai:gpt-4o-mini"), so reports can tell them from the fallback.
  """

  name: str
  complete: Callable[..., list[str]]


def openai_writer(judge: OpenAIClient) -> Writer:
  """The openai judge's endpoint as a writer: its reply cache, thread pool, retries and sampling settings.

  AxBench asks at temperature 1.0 with no token limit: give the judge's config a `max_tokens` that fits a prompt
  with in-context examples (e.g. 1024).
  """
  return Writer(judge.name, lambda prompts, draw=0: judge.complete(prompts, draw=draw))


def local_writer(model: LoadedModel, *, max_new_tokens: int = 512, temperature: float = 1.0, seed: int = 0,
                 batch_size: int = 16) -> Writer:
  """A local chat model as the writer, through axjax's batched generation (the local judge's path); draw k
  samples with seed + k."""
  sampling = SamplingConfig(max_new_tokens, temperature)
  return Writer(f"local:{model.name}", lambda prompts, draw=0: generate_text(
      model, prompts, sampling=sampling, seed=seed + draw, chat=True, batch_size=batch_size))


def steering_prompts(concepts: Sequence[str], writer: Writer | None, *,
                     allow_fallback: bool = True) -> list[tuple[str, str]]:
  """(steering prompt, source) per concept: the writer's stripped reply to T_GENERATE_STEERING_PROMPT, source
  `writer.name`; T_PROMPT_STEERING with source FALLBACK where the reply is empty or there is no writer."""
  bad = [c for c in concepts if not isinstance(c, str) or not c.strip()]
  if bad:
    raise AxjaxError(f"prompt steering needs a non-empty description for every concept, got {bad[0]!r}")
  if writer is None:
    if not allow_fallback:
      raise AxjaxError("prompt steering has no writer: pass one (openai_writer(judge) or local_writer(model)) or "
                       "allow_fallback=True to use AxBench's fixed T_PROMPT_STEERING")
    return [(T_PROMPT_STEERING % c, FALLBACK) for c in concepts]
  replies = writer.complete([T_GENERATE_STEERING_PROMPT % c for c in concepts])
  if len(replies) != len(concepts):
    raise AxjaxError(f"the writer {writer.name} returned {len(replies)} replies for {len(concepts)} prompts")
  return [(r.strip(), writer.name) if r.strip() else (T_PROMPT_STEERING % c, FALLBACK)
          for c, r in zip(concepts, replies)]


def steered_inputs(tokenizer, prompts: Sequence[str], instructions: Sequence[str]) -> list[str]:
  """AxBench's `steered_input` per (steering prompt, instruction) pair: the chat-templated user turn
  `" {prompt}\\n\\nQuestion: {instruction}"` with the generation prompt, without BOS (tokenising re-adds it)."""
  if len(prompts) != len(instructions):
    raise AxjaxError(f"steered_inputs needs one steering prompt per instruction, got {len(prompts)} prompts "
                     f"for {len(instructions)} instructions")
  return chat_format.prompt_texts(tokenizer, [f" {p}\n\nQuestion: {i}" for p, i in zip(prompts, instructions)])


def detection_prompt(concept: str, output: str) -> str:
  """The user turn PromptDetection sends: the judge's concept-relevance rubric on the output text alone."""
  return rubrics.CONCEPT.format(concept=concept, generation=output)


def parse_detection_rating(reply: str) -> float:
  """AxBench's `_get_rating_from_completion`: the first line after the last `Rating:`, brackets, quotes and
  asterisks stripped, as a number in [0, 2]; FAILED_RATING otherwise (also for NaN, which AxBench would keep)."""
  if "Rating:" not in reply:
    return FAILED_RATING
  text = reply.split("Rating:")[-1].strip().split("\n")[0].strip()
  text = text.replace("[", "").replace("]", "").strip('"').strip("'").strip("*").strip()
  try:
    rating = float(text)
  except ValueError:
    return FAILED_RATING
  return rating if math.isfinite(rating) and 0 <= rating <= 2 else FAILED_RATING


def rate_outputs(model: LoadedModel, concepts: Sequence[str], outputs: Sequence[str], *,
                 max_new_tokens: int = AXBENCH_DETECTION_TOKENS, temperature: float = 1.0, seed: int = 0,
                 batch_size: int = 16, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
  """float32 [E] PromptDetection scores: `model` rates outputs[e] for concepts[e] through fixed-shape batched
  generation (temperature 1.0 as AxBench; 0 is greedy), each reply parsed by `parse_detection_rating`;
  `progress` gets (rated, total) after each batch."""
  if len(concepts) != len(outputs):
    raise AxjaxError(f"rate_outputs needs one concept per output, got {len(concepts)} concepts for "
                     f"{len(outputs)} outputs")
  if max_new_tokens < 1 or temperature < 0 or batch_size < 1:
    raise AxjaxError("prompt detection needs max_new_tokens >= 1, temperature >= 0 and batch_size >= 1")
  replies = generate_text(model, [detection_prompt(c, o) for c, o in zip(concepts, outputs)],
                          sampling=SamplingConfig(max_new_tokens, temperature), seed=seed, chat=True,
                          batch_size=batch_size, progress=progress)
  return np.array([parse_detection_rating(r) for r in replies], np.float32).reshape(len(outputs))


def prompt_detection_scores(model: LoadedModel, data: AxbenchData, **options) -> np.ndarray:
  """float32 [E] scores of every latent-eval row (`latent_eval_examples` order), each rated for its own concept
  only, as AxBench's per-concept predict_latent; `options` go to `rate_outputs`."""
  df = data.latent_eval
  if df is None:
    raise AxjaxError(f"{data.folder} has no inference/latent_eval_data.parquet to evaluate detection on")
  concepts = [data.concept(int(c)).name for c in df["concept_id"]]
  return rate_outputs(model, concepts, df["output"].tolist(), **options)


def fit_concepts(name: str, cache, hp: dict, seed: int, progress, checkpoint_dir):
  """The pipeline's prompting "fit" (`fit.fit_method`): PromptSteering writes each concept's steering prompt with
  `cache.writer` (AxBench's fallback where there is none) and keeps it and its source as UTF-8 extras;
  PromptDetection learns nothing."""
  del hp, seed, progress, checkpoint_dir
  if name == "PromptDetection":
    return {}, None, 0
  written = steering_prompts([c.name for c in cache.concepts], cache.writer)
  return {"prompt": text_array(p for p, _ in written), "prompt_source": text_array(s for _, s in written)}, None, 0


def detection_scores(dictionary, model, ex, layer: int, *, data: AxbenchData, seed: int = 0, progress=None, **_
                     ) -> tuple[np.ndarray, bool]:
  """PromptDetection's [E, C] scores: each latent-eval row rated for its own concept (`prompt_detection_scores`),
  0 in the other columns (a generation per row and concept is too dear for the imbalanced pool: False)."""
  del layer
  own = dictionary.rows_of(ex.concept_ids, missing=-1)
  hp = dictionary.hyperparameters
  rated = prompt_detection_scores(model, data, max_new_tokens=hp["max_new_tokens"], temperature=hp["temperature"],
                                  seed=seed, progress=None if progress is None else (
                                      lambda done, total: progress("detection scores (PromptDetection)", done,
                                                                   total)))
  out = np.zeros((len(own), dictionary.num_concepts), np.float32)
  out[np.flatnonzero(own >= 0), own[own >= 0]] = rated[own >= 0]
  return out, False
