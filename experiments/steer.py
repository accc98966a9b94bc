"""AxBench's whole protocol in one job: train dictionaries, detect, steer, judge, select factors, report.

  python -m experiments.steer                       # quick profile on the embedded Gemma 3 270M (CPU minutes)
  python -m experiments.steer --profile=paper --model=/ckpt/gemma-2-2b-it --layer=20 \\
      --judge=openai --judge_model=gpt-4o-mini     # the paper-scale protocol, on a GPU or TPU

Writes into --output_dir: run.json, dictionaries/<method>/ and detection/<method>.json (as experiments.detect),
steering/rows.parquet (what is generated), steering/generations/part-*.parquet (finished batches),
steering/generations.parquet, steering/ratings.parquet, results.json, report.md, descriptions.json (output-centric
descriptions of every dictionary) and PNG plots. Rerunning the
same command resumes: finished methods, batches and judge replies (cached on disk) are not redone.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from absl import flags
import numpy as np

import axjax
from axjax import atomic_files
from axjax.data.axbench_format import read_axbench
from axjax.evaluation import descriptions
from axjax.errors import AxjaxError
from axjax.judges.base import Judge
from axjax.judges.local_judge import LocalJudge
from axjax.judges.openai_judge import OpenAIJudge
from axjax.judges.proxy import ProxyJudge
from axjax.llm.openai_client import OpenAIConfig
from axjax.loading.tokenizer import cache_dir
from axjax.methods import preference_methods, prompting, registry, sae_methods
from axjax.methods.adapter_training import adapters_from
from axjax.methods.joint_training import memory_budget
from axjax.methods.sft import check_sft_memory
from axjax.methods.detection_run import check_run, read_reusable, run_detection, seed_results, training_records
from axjax.methods.fit import DEAD_LATENT_REMEDIES, ActivationCache
from axjax.steering_eval.instructions import read_instructions
from axjax.steering_eval import evaluations, row_steerers
from axjax.steering_eval.protocol import PROFILES, SAE_METHODS, SteeringProtocol, profile
from axjax.steering_eval.report import write_report
from axjax.steering_eval.rows import steering_rows
from experiments import cli, sae_flags, scale_flags, suppression_run

_PROFILE = flags.DEFINE_enum("profile", "quick", sorted(PROFILES),
                             "quick: 3 concepts, 2 methods, 5 factors, 4 instructions, 128 tokens (CPU minutes); "
                             "paper: AxBench's full protocol. Other flags override the profile's values.")
_MODEL = flags.DEFINE_string("model", axjax.EMBEDDED_MODEL, "HF checkpoint folder, .gguf file or 'gemma-3-270m'.")
_DATA = flags.DEFINE_string("data", "concept10/prod_2b_l20_v1",
                            "A shipped AxBench dataset name (see axjax.data.builtin_datasets()) or a folder path.")
_LAYER = flags.DEFINE_integer("layer", 12, "Decoder layer whose output (residual stream) is read and steered.")
_METHODS = flags.DEFINE_list("methods", None, f"Methods (default: the profile's), from: {', '.join(registry.METHODS)}.")
_MAX_CONCEPTS = flags.DEFINE_integer("max_concepts", None, "Use only the first N concepts (default: the profile's).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None,
                                     "Train on at most N examples per concept, half positives and half negatives "
                                     "(AxBench's max_num_of_examples).")
_FACTORS = flags.DEFINE_list("factors", None, "Steering factors (default: the profile's; paper: AxBench's 14).")
_NUM_INSTRUCTIONS = flags.DEFINE_integer("num_instructions", None,
                                         "Instructions per concept; the first half selects the factor.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Tokens generated per row (default: the profile's).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature of steered generation (AxBench: 1.0).")
_INTERVENTION = flags.DEFINE_enum(
    "intervention", "addition", ["addition", "clamping", "min_clamping"],
    "addition: h + factor*max_act*w; clamping: the part of h along w set to that (SAE methods: their feature's "
    "activation set to it, AxBench's SAE clamping); min_clamping: an SAE feature raised to at least it (SAE "
    "methods only).")
_INSTRUCTIONS = flags.DEFINE_string("instructions", None,
                                    "Instructions file (.jsonl/.json with 'instruction', or one per line); "
                                    "default AlpacaEval's 805 (CC BY-NC 4.0).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Rows generated per compiled batch.")
_BASELINE = flags.DEFINE_string("baseline", None, "Method the win rates compare against (default: PromptSteering where it runs, as AxBench; else the first "
                                  "steering method).")
_JUDGE = flags.DEFINE_enum("judge", "proxy", ["proxy", "openai", "local"],
                           "proxy: offline embedding+perplexity proxy (labelled as such); openai: any "
                           "OpenAI-compatible endpoint; local: an instruction-tuned model run by axjax.")
_JUDGE_MODEL = flags.DEFINE_string("judge_model", "gpt-4o-mini",
                                   "openai: the model name; local: the checkpoint folder or .gguf of an -it Gemma.")
_JUDGE_URL = flags.DEFINE_string("judge_base_url", "https://api.openai.com/v1",
                                 "openai: the endpoint up to the API version, e.g. http://localhost:8000/v1.")
_JUDGE_KEY_ENV = flags.DEFINE_string("judge_api_key_env", "OPENAI_API_KEY", "openai: the variable holding the key.")
_JUDGE_CONCURRENCY = flags.DEFINE_integer("judge_concurrency", 16, "openai: requests in flight at once.")
_JUDGE_CACHE = flags.DEFINE_string("judge_cache", None,
                                   "Judge reply cache (sqlite; default $AXJAX_CACHE/judge_replies.sqlite).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Results folder (default checkpoints/steer-<profile>-<data>-l<layer>).")
_DICTIONARIES = flags.DEFINE_string("dictionaries", None,
                                    "Steer with the dictionaries of an earlier experiments.detect/steer results folder "
                                    "instead of training them (they must fit --model and --layer).")
_HPARAMS = flags.DEFINE_list("hparams", [], "Method overrides as Method.name=value, e.g. ReFT-r1.n_epochs=1.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for training, sampling and the bootstrap.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model dtype.")
_PROMPT_WRITER = flags.DEFINE_string(
    "prompt_writer", None, "Who writes PromptSteering's steering prompts: 'judge' (the --judge's LLM: an "
    "OpenAI-compatible endpoint or the local model), a local -it checkpoint folder or .gguf, or 'fallback' (AxBench's "
    "fixed template, labelled as such). Default: the profile's (quick: fallback; paper: judge).")
_EVALS = flags.DEFINE_list(
    "evals", ["steer"], "Evaluations: steer (AxBench's), suppress (RePS: instructions asking for the concept, negative "
    "factors), rules (suppress on rule concepts, scored by code), attacks (the chosen suppression factor under prompt "
    "overrides and many-shot turns; needs suppress or rules). Each writes its own folder and report.")
_DEAD_REMEDY = flags.DEFINE_enum(
    "dead_latent_remedy", "none", list(DEAD_LATENT_REMEDIES),
    "ReFT-r1/SSV concepts whose ReLU latent never fired in the last training epoch: 'none' keeps them (AxBench); "
    "'diffmean' retrains them from their DiffMean direction.")


def protocol_from_flags(base: SteeringProtocol) -> SteeringProtocol:
  """The profile's protocol with the flags that were given applied (and checked)."""
  changes = {}
  if _FACTORS.value is not None:
    try:
      changes["factors"] = tuple(float(f) for f in _FACTORS.value)
    except ValueError:
      raise AxjaxError(f"--factors must be numbers, got {_FACTORS.value}") from None
  if _NUM_INSTRUCTIONS.value is not None:
    changes.update(instructions_per_concept=_NUM_INSTRUCTIONS.value, select_count=_NUM_INSTRUCTIONS.value // 2)
  if _MAX_NEW.value is not None:
    changes["max_new_tokens"] = _MAX_NEW.value
  changes.update(temperature=_TEMPERATURE.value, intervention=_INTERVENTION.value)
  return dataclasses.replace(base, **changes)


def make_judge(perplexity_of: dict[tuple[str, str], float]) -> Judge:
  """The judge the flags ask for; the proxy reads fluency off the perplexities computed at generation."""
  cache = _JUDGE_CACHE.value or os.path.join(cache_dir(), "judge_replies.sqlite")
  if _JUDGE.value == "openai":
    return OpenAIJudge(OpenAIConfig(model=_JUDGE_MODEL.value, base_url=_JUDGE_URL.value, cache_path=cache,
                                         api_key_env=_JUDGE_KEY_ENV.value, concurrency=_JUDGE_CONCURRENCY.value))
  if _JUDGE.value == "local":
    return LocalJudge(axjax.load(_JUDGE_MODEL.value, _DTYPE.value), cache)
  return ProxyJudge(lambda requests: np.array([perplexity_of[(r.instruction, r.generation)] for r in requests]))


def main(argv):
  del argv
  prof = profile(_PROFILE.value)
  chunking, mesh = scale_flags.chunking(), scale_flags.mesh()
  default = prof.methods + (SAE_METHODS if sae_flags.given() and _PROFILE.value == "paper" else ())
  methods = [registry.method(m).name for m in (_METHODS.value or default)]
  overrides = registry.parse_overrides(_HPARAMS.value, methods)
  sae_flags.check(methods)
  sae_max_acts = sae_flags.max_activations()
  steered = registry.steering(methods)
  if not steered:
    raise AxjaxError(f"none of --methods {methods} steers (they detect only): add a steering method")
  baseline = registry.method(_BASELINE.value).name if _BASELINE.value else (
      "PromptSteering" if "PromptSteering" in steered else steered[0])
  if baseline not in steered:
    raise AxjaxError(f"--baseline {baseline} is not among the steering methods {steered}")
  protocol = protocol_from_flags(prof.protocol)
  if protocol.intervention == "min_clamping" and (plain := [m for m in steered if registry.method(m).uses_factor
                                                            and m not in sae_methods.METHODS]):
    raise AxjaxError(f"--intervention=min_clamping raises an SAE feature's activation and {plain[0]} has no SAE "
                     "feature: steer it with addition or clamping, or use only SAE methods")
  max_concepts = _MAX_CONCEPTS.value if _MAX_CONCEPTS.value is not None else prof.max_concepts
  data = read_axbench(_DATA.value, max_concepts=max_concepts)  # all input checked before any model work
  evals = suppression_run.check_evals(_EVALS.value, [c.name for c in data.concepts])
  instructions = read_instructions(_INSTRUCTIONS.value)
  perplexity_of: dict[tuple[str, str], float] = {}
  judge = make_judge(perplexity_of)
  judge.check()
  writer_flag = prompt_writer_flag(prof, methods, judge, evals)
  output = _OUTPUT.value or os.path.join(
      "checkpoints", f"steer-{_PROFILE.value}-{_DATA.value.replace('/', '-')}-l{_LAYER.value}")
  model = axjax.load(_MODEL.value, _DTYPE.value)
  model.config.check_layer(_LAYER.value)
  sae, sae_features = sae_flags.load(model, data.concepts, _LAYER.value, methods)
  hparams = {name: registry.hyperparameters(registry.method(name), model.config, overrides.get(name))
             for name in methods}
  factor_grids = {}
  for name in methods:
    if registry.method(name).kind == "adapter":
      adapters_from(name, model.config, hparams[name])
    if registry.method(name).kind == "preference":
      preference_methods.edit_of(name, model.config, preference_methods.training_hyperparameters(
          name, hparams[name]), _LAYER.value)
      factor_grids[name] = preference_methods.factor_list(name, "steering_factors", hparams[name]["steering_factors"])
  if "SFT" in methods:
    check_sft_memory(model.config, hparams["SFT"], memory_budget())
  writer = make_writer(writer_flag, judge)
  settings = {"model": model.name, "data": _DATA.value, "layer": _LAYER.value, "seed": _SEED.value,
              "dtype": _DTYPE.value, "methods": methods, "hparams": _HPARAMS.value, "max_examples": _MAX_EXAMPLES.value,
              "concept_ids": [c.concept_id for c in data.concepts], "instructions": _INSTRUCTIONS.value,
              "dictionaries": _DICTIONARIES.value,
              "protocol": dataclasses.asdict(protocol),
              "judge": judge.name, "sae": sae and sae.source,
              "sae_features": sae_features and {str(c): f for c, f in sae_features.items()},
              "sae_max_acts": sae_max_acts and {str(f): v for f, v in sae_max_acts.items()},
              "prompt_writer": writer_flag}
  reusable = {} if not _DICTIONARIES.value else read_reusable(
      _DICTIONARIES.value, methods, hidden_size=model.config.hidden_size, layer=_LAYER.value, model_name=model.name)
  check_run(output, settings)
  seed_results(output, reusable)
  progress = cli.progress_bars()

  cache = ActivationCache(model, data, _LAYER.value, progress, mesh=mesh, sae=sae,
                          sae_features=sae_features, writer=writer,
                          max_examples=_MAX_EXAMPLES.value)
  reports, dictionaries = run_detection(cache, methods, output, overrides=overrides, seed=_SEED.value,
                                       dead_latent_remedy=_DEAD_REMEDY.value, **chunking,
                                       imbalance_factor=100, log=cli.say)
  placed = cache.placed_params
  del cache  # the activations are not needed for steering

  rows = steering_rows(steered, [(c.concept_id, c.name) for c in data.concepts], instructions, protocol,
                       factorless={m for m in steered if not registry.method(m).uses_factor}, factor_grids=factor_grids)
  if "SFT" in steered:  # AxBench fine-tunes its first 20 concepts only
    first = [c.concept_id for c in data.concepts][:hparams["SFT"]["max_concepts"]]
    rows = rows[(rows["method"] != "SFT") | rows["concept_id"].isin(first)].reset_index(drop=True)
  dictionaries = sae_flags.steering_dictionaries(dictionaries, sae_max_acts)
  make_steerers = lambda dicts: row_steerers.steerers(model, data, dicts, protocol, _SEED.value,
                                                      os.path.join(output, "training"), cli.say, _MAX_EXAMPLES.value,
                                                      _LAYER.value)
  steerers = make_steerers(dictionaries)
  run = functools.partial(evaluations.generate_and_rate, model, dictionaries=dictionaries, judge=judge,
                          perplexity_of=perplexity_of, progress=progress, layer=_LAYER.value, protocol=protocol,
                          seed=_SEED.value, batch_size=_BATCH.value, mesh=mesh, params=placed)
  report = functools.partial(write_report, judge_name=judge.name, judge_is_proxy=judge.is_proxy, baseline=baseline,
                             settings=settings, methods=methods)
  sections = []
  if "steer" in evals:
    table = run(rows, steerers=steerers, folder=output)
    if table is None:
      return  # judging and the report are host work: process 0 does them alone
    results = report(output, table, judge_usage=judge.usage(), detection=reports or None,
                     training=training_records(output, methods),
                     described=descriptions.describe_dictionaries(model, dictionaries))
    cli.say(_summary_lines(results, output))
  suppressing = [e for e in ("suppress", "rules") if e in evals]
  if suppressing:
    sections = suppression_run.suppression_evals(suppressing[0], "attacks" in evals, rows, data, dictionaries,
                                                 steerers, make_steerers, writer, run, report, judge, output)
  if sections:
    main_report = os.path.join(output, "report.md")
    before = open(main_report).read() if os.path.exists(main_report) else "# axjax steering report\n"
    heading = suppression_run.HEADING
    atomic_files.write_text(main_report, before.split(heading)[0] + heading + "\n".join(sections) + "\n")


def prompt_writer_flag(prof, methods: list[str], judge: Judge, evals: list[str]) -> str | None:
  """--prompt_writer or the profile's, checked before any model work; None without PromptSteering and without the
  suppression evaluations (whose rewritten instructions and avoid prompts it writes)."""
  if "PromptSteering" not in methods and evals == ["steer"]:
    return None
  value = _PROMPT_WRITER.value or prof.prompt_writer
  who = "PromptSteering" if "PromptSteering" in methods else "The suppression evaluation"
  if value == "judge" and judge.is_proxy:
    raise AxjaxError(f"{who} needs an LLM to write its steering prompts and the proxy judge has none: pass "
                     "--judge=openai or --judge=local (it writes them), --prompt_writer=<a local -it checkpoint>, "
                     "or --prompt_writer=fallback for AxBench's fixed template")
  if value not in ("judge", "fallback") and not os.path.exists(value):
    raise AxjaxError(f"--prompt_writer {value} is neither 'judge', 'fallback' nor an existing checkpoint path")
  return value


def make_writer(value: str | None, judge: Judge):
  """The `prompting.Writer` that --prompt_writer names (None: AxBench's fallback template)."""
  if value in (None, "fallback"):
    return None
  if value == "judge":
    return (prompting.openai_writer(judge) if isinstance(judge, OpenAIJudge) else
            prompting.local_writer(judge.model, seed=_SEED.value))
  return prompting.local_writer(axjax.load(value, _DTYPE.value), seed=_SEED.value)


def _summary_lines(results: dict, output: str) -> str:
  """The per-method held-out scores, for the terminal."""
  proxy = " (offline PROXY judge, not comparable to the paper)" if results["judge"]["is_proxy"] else ""
  lines = [f"\nSteering score, held-out instructions at each concept's best factor{proxy}:"]
  for entry in results["summary"]:
    lines.append(f"  {entry['method']:<12} {entry['score']:.3f}  [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]")
  lines.append(f"Report: {os.path.join(output, 'report.md')}")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.run(main)
