"""experiments.steer's RePS evaluations: suppression (or rule suppression) and the prompt attacks, each generated,
rated and reported into its own folder of the run (`axjax.steering_eval.evaluations`, `.suppression`)."""

from __future__ import annotations

import os

import pandas as pd

from axjax import atomic_files, processes
from axjax.data.preference_examples import positive_rows
from axjax.dictionary.store import text_array
from axjax.errors import AxjaxError
from axjax.methods import registry
from axjax.steering_eval import evaluations, rules, suppression
from experiments import cli

HEADING = "\n## Suppression and attacks (RePS)\n"  # the main report's section


def check_evals(names: list[str], concepts: list[str]) -> list[str]:
  """The --evals, checked before any model work."""
  if unknown := [e for e in names if e not in evaluations.EVALS]:
    raise AxjaxError(f"unknown evaluation {unknown[0]!r}: choose from {', '.join(evaluations.EVALS)}")
  if "attacks" in names and not {"suppress", "rules"} & set(names):
    raise AxjaxError("--evals=attacks reuses the factors the suppression chooses: add suppress (or rules)")
  if {"suppress", "rules"} <= set(names):
    raise AxjaxError("--evals takes suppress (judged concepts) or rules (rule concepts scored by code), not both")
  if processes.multi() and set(names) - {"steer"}:
    raise AxjaxError("--evals=suppress, rules and attacks run in a one-process job: they generate after judging, "
                     "which process 0 does alone once the others have finished")
  if "rules" in names:
    rules.check_rules(concepts)
  return list(dict.fromkeys(names))


def suppression_evals(kind: str, attacks: bool, rows, data, dictionaries, steerers, make_steerers, writer, run,
                      report, judge, output: str) -> list[str]:
  """RePS's suppression (or rule suppression) evaluation, then, with `attacks`, each prompt attack at the chosen
  factors: one folder and report each under output/; returns the markdown lines summarising them."""
  factored = [m for m in rows["method"].unique() if registry.method(m).uses_factor or m == "PromptSteering"]
  if skipped := sorted(set(rows["method"]) - set(factored)):
    cli.say(f"{kind}: {', '.join(skipped)} steer without a factor and cannot suppress; left out")
  rows = rows[rows["method"].isin(factored)].reset_index(drop=True)
  folder = os.path.join(output, "suppression" if kind == "suppress" else "rules")
  texts = suppression_texts(rows, data, writer, os.path.join(folder, "texts.json"))
  blended = {(int(c), i): t for c, i, t in texts["blended"]}
  supp_rows = suppression.suppression_rows(rows, blended)
  supp_dicts = dict(dictionaries)
  if "PromptSteering" in supp_dicts:  # the prompting baseline is told to avoid the concept
    avoid = {int(c): t for c, t in texts["avoid"]}
    prompt = supp_dicts["PromptSteering"]
    supp_dicts["PromptSteering"] = prompt.replace(extras={**prompt.extras, "prompt": text_array(
        [avoid[c] for c in prompt.concept_ids])})
  supp_steerers = {**steerers, **make_steerers({k: v for k, v in supp_dicts.items() if k == "PromptSteering"})}
  score = lambda table: evaluations.suppression_scored(table, rules=kind == "rules")
  table = run(supp_rows, dictionaries=supp_dicts, steerers=supp_steerers, folder=folder)
  if table is None:
    return []
  label = f" (texts: {', '.join(sorted(set(texts['sources'])))})"
  results = report(folder, score(table), judge_usage=judge.usage(), detection=None,
                   settings={**report.keywords["settings"], "evaluation": kind, "texts": texts["sources"]})
  lines = [f"{kind} ({judge.name} judge{label}): [{folder}/report.md]",
           *[f"- {r['method']}: {r['score']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for r in results["summary"]]]
  if not attacks:
    return lines
  chosen = pd.DataFrame(results["selection"])
  positives = {c.concept_id: data.train.iloc[positive_rows(data, [c.concept_id])[:ATTACK_SHOTS]]
               for c in data.concepts}  # examples of answers using the concept
  shots = {c: list(zip(frame["input"], frame["output"])) for c, frame in positives.items()}
  attacked = {}
  for attack in suppression.ATTACKS:
    attack_folder = os.path.join(output, "attacks", attack)
    attack_table = run(suppression.attack_rows(supp_rows, chosen, attack, shots), dictionaries=supp_dicts,
                       steerers=supp_steerers, folder=attack_folder)
    attacked[attack] = report(attack_folder, score(attack_table), judge_usage=judge.usage(), detection=None)
  drops = evaluations.attack_drops(results, attacked)
  atomic_files.write_parquet(os.path.join(output, "attacks", "drops.parquet"), drops)
  lines += ["", "Score drop under attack (suppression score at the chosen factor minus the attacked one):", "",
            "| method | attack | suppression | attacked | drop |", "|---|---|---|---|---|",
            *[f"| {r.method} | {r.attack} | {r.suppression:.3f} | {r.attacked:.3f} | {r.drop:.3f} |"
              for r in drops.itertuples()]]
  return lines


ATTACK_SHOTS = 4  # many-shot turns per concept offline (its first training positives)


def suppression_texts(rows, data, writer, path: str) -> dict:
  """The rewritten instructions and avoid prompts of the suppression rows, written by `writer` once (or from the
  templates) and kept in `path`, so a rerun reuses them."""
  if os.path.exists(path):
    return atomic_files.read_json(path)
  pairs = rows[["concept_id", "concept", "instruction"]].drop_duplicates(["concept_id", "instruction"])
  blended = suppression.blended_instructions(list(zip(pairs["concept"], pairs["instruction"])), writer)
  concepts = [(c.concept_id, c.name) for c in data.concepts]
  avoid = suppression.avoid_prompts([name for _, name in concepts], writer)
  texts = {"blended": [[int(c), i, t] for c, i, (t, _) in zip(pairs["concept_id"], pairs["instruction"], blended)],
           "avoid": [[c, t] for (c, _), (t, _) in zip(concepts, avoid)],
           "sources": sorted({source for _, source in blended + avoid})}
  atomic_files.write_json(path, texts)
  return texts
