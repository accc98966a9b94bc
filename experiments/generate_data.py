"""Generates AxBench concept data for a list of concepts with an LLM, as AxBench's generate stage.

  python -m experiments.generate_data --concepts=concepts.txt --output_dir=data/my-concepts \
      --llm=openai --llm_model=gpt-4o-mini                       # any OpenAI-compatible endpoint
  python -m experiments.generate_data --concepts=concepts.txt --output_dir=data/my-concepts \
      --llm=path/to/gemma-2-2b-it                                # a local chat model run by axjax

--concepts: .txt (one description per line), .csv (description,reference) or a Neuronpedia .json export.
Writes into --output_dir AxBench's layout, which experiments.detect and experiments.steer read with --data=<folder>:
generate/metadata.jsonl and train_data*.parquet (--mode=train), inference/latent_eval_data.parquet (latent),
generate/dpo_train_data.parquet (pairs); and generate/generation.json (what the folder is for), generate/pool.json
(the target model's shared negatives), {generate,inference}/concepts/<id>.json (one record per finished concept),
generate/summary.json (counts per concept, skipped concepts) and generate/llm_usage.jsonl (calls, tokens, cost).
Rerunning the same command resumes at the next unfinished concept; another concept list or setting is refused.
"""

from __future__ import annotations

import os

from absl import flags

import axjax
from axjax.data_generation import run_state
from axjax.data_generation.concept_lists import read_concept_list
from axjax.data_generation.generator import (MODES, GenerationConfig, Job, generate_latent, generate_pairs,
                                             generate_train, require_training, write_summary)
from axjax.data_generation.sampling import Counts
from axjax.data_generation.seed_instructions import BUILTIN, seed_instructions
from axjax.errors import AxjaxError
from axjax.llm.openai_client import OpenAIClient, OpenAIConfig
from axjax.loading.tokenizer import cache_dir
from axjax.methods import prompting
from axjax.methods.own_responses import RESPONSE_TOKENS
from experiments import cli

_CONCEPTS = flags.DEFINE_string("concepts", None, "The concept list: .txt, .csv or Neuronpedia .json.")
_OUTPUT = flags.DEFINE_string("output_dir", None, "The AxBench folder to write (resumed if it exists).")
_MODEL = flags.DEFINE_string("model", axjax.EMBEDDED_MODEL,
                             "The target model (answers the shared negatives and the pairs): HF checkpoint folder, "
                             ".gguf file or 'gemma-3-270m'.")
_MODE = flags.DEFINE_list("mode", ["train", "latent"],
                          f"What to generate, from {', '.join(MODES)} (run in that order); pairs: the target model's "
                          "own answers to the training instructions, for the preference (RePS) methods.")
_LLM = flags.DEFINE_string("llm", "openai", "'openai' (an OpenAI-compatible endpoint at --llm_base_url, model "
                           "--llm_model), the endpoint's URL itself (e.g. http://localhost:8000/v1), or a local chat "
                           "checkpoint (folder, .gguf or 'gemma-3-270m').")
_LLM_MODEL = flags.DEFINE_string("llm_model", "gpt-4o-mini", "openai: the model name (AxBench: gpt-4o-mini).")
_LLM_URL = flags.DEFINE_string("llm_base_url", "https://api.openai.com/v1",
                               "openai: the endpoint up to the API version, e.g. http://localhost:8000/v1.")
_LLM_KEY_ENV = flags.DEFINE_string("llm_api_key_env", "OPENAI_API_KEY", "openai: the variable holding the key.")
_LLM_CONCURRENCY = flags.DEFINE_integer("llm_concurrency", 16, "openai: requests in flight at once.")
_LLM_TIMEOUT = flags.DEFINE_float("llm_timeout_s", 60.0, "openai: seconds before a request is retried.")
_LLM_MAX_TOKENS = flags.DEFINE_integer("llm_max_tokens", 512, "Tokens per LLM reply.")
_LLM_CACHE = flags.DEFINE_string("llm_cache", None,
                                 "openai: reply cache (sqlite; default $AXJAX_CACHE/llm_replies.sqlite).")
_SEEDS = flags.DEFINE_string("seed_instructions", BUILTIN,
                             "'builtin' (the shipped Concept10 instructions), a folder of {genre}_{split}.jsonl, or "
                             "AxBench's seed_instructions folder (datasets save_to_disk).")
_SEED = flags.DEFINE_integer("seed", 42, "Seed of the instruction draws and the LLM's sampling (AxBench: 42).")
_OUTPUT_LENGTH = flags.DEFINE_integer("output_length", 128,
                                      "Target-tokenizer tokens each response is cut to (the pool: 1.5x new tokens).")
_NUM = flags.DEFINE_integer("num_of_examples", 144, "Training examples per concept, half positives (AxBench: 144); "
                            "the shared pool holds as many negatives per genre.")
_LATENT_NUM = flags.DEFINE_integer("latent_num_of_examples", 36,
                                   "Eval positives, and eval negatives, per concept (AxBench: 36).")
_RETRIES = flags.DEFINE_integer("retries", 2, "Further independent replies asked for a reply that is unusable; "
                                "a concept still short of a response is skipped and reported.")
_PAIR_TOKENS = flags.DEFINE_integer("pair_tokens", RESPONSE_TOKENS,
                                    "pairs: new tokens of the target model's own answers; the preference methods "
                                    "find them in their response cache when this equals their response_tokens.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model dtype.")
flags.mark_flags_as_required(["concepts", "output_dir"])


def _modes() -> list[str]:
  unknown = [m for m in _MODE.value if m not in MODES]
  if unknown or not _MODE.value:
    raise AxjaxError(f"--mode {','.join(_MODE.value)} is not a list of {', '.join(MODES)}")
  return [m for m in MODES if m in _MODE.value]


def _client() -> OpenAIClient | None:
  """The OpenAI-compatible client --llm=openai asks for, checked (a server that refuses, a missing key)."""
  endpoint = _LLM.value.startswith(("http://", "https://"))
  if _LLM.value != "openai" and not endpoint:
    return None
  client = OpenAIClient(OpenAIConfig(
      model=_LLM_MODEL.value, base_url=_LLM.value if endpoint else _LLM_URL.value, api_key_env=_LLM_KEY_ENV.value,
      concurrency=_LLM_CONCURRENCY.value, timeout_s=_LLM_TIMEOUT.value, max_tokens=_LLM_MAX_TOKENS.value,
      seed=_SEED.value, cache_path=_LLM_CACHE.value or os.path.join(cache_dir(), "llm_replies.sqlite")), role="LLM")
  client.check()
  return client


def _writer(client: OpenAIClient | None, model: axjax.LoadedModel) -> prompting.Writer:
  """The LLM --llm names: the endpoint's client, or a local chat model (the target itself if the same)."""
  if client is not None:
    return prompting.openai_writer(client)
  llm = model if _LLM.value == _MODEL.value else axjax.load(_LLM.value, _DTYPE.value)
  return prompting.local_writer(llm, max_new_tokens=_LLM_MAX_TOKENS.value, seed=_SEED.value)


def _usage_since(client: OpenAIClient, before: dict[str, float]) -> dict[str, float]:
  return {k: v - before.get(k, 0) for k, v in client.usage().items()}


def main(argv):
  del argv
  modes = _modes()
  concepts = read_concept_list(_CONCEPTS.value)
  seeds = seed_instructions(_SEEDS.value)
  if _NUM.value < 2 or _LATENT_NUM.value < 1:
    raise AxjaxError("--num_of_examples must be at least 2 and --latent_num_of_examples at least 1")
  config = GenerationConfig(seed=_SEED.value, output_length=_OUTPUT_LENGTH.value, retries=_RETRIES.value,
                            pair_tokens=_PAIR_TOKENS.value,
                            counts=Counts(train_positives=_NUM.value // 2, pool_per_genre=_NUM.value // 2,
                                          eval_positives=_LATENT_NUM.value, eval_negatives=_LATENT_NUM.value))
  client = _client()
  model = axjax.load(_MODEL.value, _DTYPE.value)
  writer = _writer(client, model)
  folder = _OUTPUT.value
  settings = config.settings(concepts, model, writer.name, _SEEDS.value)
  run_state.check_settings(folder, settings)  # nothing is written before these checks
  if "train" not in modes:
    require_training(folder, concepts)
  run_state.write_settings(folder, settings)
  job = Job(folder, concepts, model, writer, seeds, config, log=cli.say, progress=cli.progress_bars())
  steps = {"train": generate_train, "latent": generate_latent, "pairs": generate_pairs}
  for mode in modes:
    before = client.usage() if client is not None else {}
    try:
      steps[mode](job)
    finally:
      if client is not None:
        run_state.append_usage(folder, mode, writer.name, _usage_since(client, before))
  cli.say(f"\n{write_summary(job)}\n\nAxBench data in {folder}: pass --data={folder} to experiments.detect or "
          "experiments.steer")


if __name__ == "__main__":
  cli.run(main)
