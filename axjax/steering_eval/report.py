"""Writes a steering evaluation's results.json, report.md and PNG plots from its table of rated generations.

Every file is written atomically; PNGs are rendered off-screen with matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from axjax import atomic_files
from axjax.evaluation import descriptions
from axjax.errors import AxjaxError
from axjax.steering_eval import scores

N_BOOT, SEED = 1000, 0  # AxBench-style bootstrap over concepts, fixed so reruns give the same CIs
RESULTS, REPORT, FACTOR_PLOT, ROC_PLOT = "results.json", "report.md", "steering_factors.png", "detection_roc.png"
TRAINING_PLOT, SCORE_PLOT = "training_loss.png", "method_scores.png"
PROXY_WARNING = ("**Offline proxy judge: these scores come from an offline proxy judge that only approximates "
                 "AxBench's rubric; they are not comparable to the paper's GPT-4o-mini judge or its numbers.**")
PANELS = (("score", "Overall (harmonic mean)"), ("concept_rating", "Concept"),
          ("instruction_rating", "Instruction"), ("fluency_rating", "Fluency"))


def write_report(output_dir: str, df: pd.DataFrame, *, judge_name: str, judge_is_proxy: bool,
                 judge_usage: dict, baseline: str | None, detection: dict[str, dict] | None,
                 settings: dict, training: dict[str, pd.DataFrame] | None = None,
                 described: list[dict] | None = None, methods: list[str] | None = None) -> dict[str, Any]:
  """Scores `df` as AxBench does and writes results.json, report.md and plots into output_dir; returns results.json.

  `detection` maps a method to its detection_report output and adds an AUROC table and ROC plot; `training`
  maps a gradient-trained method to its training record and adds loss curves; `described` (descriptions'
  `describe` outputs) adds the output-centric description tables and descriptions.json. Every method of
  `methods` gets a row in the steering and detection tables: "n/a" where it does not steer or detect (AxBench's
  detection-only and steering-only methods).
  """
  curves = scores.factor_curves(df)
  selection = scores.select_factors(df)
  heldout = scores.heldout_scores(df, selection)
  summary = scores.method_summary(heldout, N_BOOT, SEED)
  wins = None if baseline is None else scores.winrates(heldout, baseline)
  mean_curves = scores.mean_factor_curves(curves)
  aurocs = None if detection is None else _detection_aurocs(detection)
  plots = [name for name, drawn in ((SCORE_PLOT, True), (FACTOR_PLOT, mean_curves["factor"].notna().any()),
                                    (ROC_PLOT, aurocs is not None), (TRAINING_PLOT, bool(training))) if drawn]
  results = {
      "judge": {"name": judge_name, "is_proxy": bool(judge_is_proxy), "usage": _plain(judge_usage, "judge_usage")},
      "settings": _plain(settings, "settings"),
      "bootstrap": {"n_boot": N_BOOT, "seed": SEED, "confidence": 0.95, "over": "concepts"},
      "baseline": baseline,
      "summary": _records(summary),
      "winrates": None if wins is None else _records(wins),
      "selection": _records(selection),
      "heldout": _records(heldout),
      "factor_curves": _records(mean_curves),
      "detection": aurocs,
      "methods": list(methods or summary["method"]),
      "files": [RESULTS, REPORT, *plots, *([descriptions.FILE] if described else [])],
  }
  if described:
    descriptions.write_descriptions(output_dir, described)
  atomic_files.write_bytes(os.path.join(output_dir, SCORE_PLOT), _score_bars(summary, judge_is_proxy))
  if FACTOR_PLOT in plots:
    atomic_files.write_bytes(os.path.join(output_dir, FACTOR_PLOT),
                             _factor_plot(mean_curves, summary, baseline, judge_is_proxy))
  if ROC_PLOT in plots:
    atomic_files.write_bytes(os.path.join(output_dir, ROC_PLOT), _roc_plot(detection, aurocs))
  if TRAINING_PLOT in plots:
    atomic_files.write_bytes(os.path.join(output_dir, TRAINING_PLOT), training_loss_plot(training))
  atomic_files.write_text(os.path.join(output_dir, REPORT), _markdown(results, described or []))
  atomic_files.write_json(os.path.join(output_dir, RESULTS), results)
  return results


def _markdown(results: dict[str, Any], described: list[dict]) -> str:
  """report.md: judge, the Table 2-style summary, per-concept scores and factors, detection AUROC, output-centric
  descriptions and plots."""
  judge, proxy = results["judge"], results["judge"]["is_proxy"]
  tag = " — offline proxy judge, not comparable to the paper" if proxy else ""
  usage = ", ".join(f"{name} {value}" for name, value in judge["usage"].items()) or "none recorded"
  methods = [row["method"] for row in results["summary"]]
  concepts = _concept_names(results["heldout"])
  boot = results["bootstrap"]
  lines = ["# Steering evaluation", ""]
  if proxy:
    lines += [f"> {PROXY_WARNING}", ""]
  lines += [f"- Judge: `{judge['name']}`{' (offline proxy)' if proxy else ''}; usage: {usage}",
            f"- {len(methods)} methods, {len(concepts)} concepts; factor chosen per method and concept on the select "
            f"split, scores reported on the held-out test split",
            f"- 95% CI: percentile bootstrap over concepts, {boot['n_boot']} resamples, seed {boot['seed']}", ""]
  lines += _summary_table(results, tag)
  heldout = {(row["method"], row["concept_id"]): row for row in results["heldout"]}
  lines += [f"## Held-out score per concept{tag}", ""]
  lines += _concept_table(concepts, methods, lambda method, concept_id: _number(
      heldout.get((method, concept_id), {}).get("score")))
  selected = {(row["method"], row["concept_id"]): row["factor"] for row in results["selection"]}
  lines += ["## Selected factors", "", "Chosen on the select split; methods without a factor show –.", ""]
  lines += _concept_table(concepts, methods, lambda method, concept_id: _number(selected.get((method, concept_id)),
                                                                                 "g"))
  if results["detection"] is not None:
    lines += _detection_tables(results["detection"], concepts, results["methods"])
  if described:
    lines += ["## Output-centric descriptions", "", "Each concept's vector read through the unembedding (logit lens) "
              "and added at its max activation after neutral prompts (`descriptions.json` has every token).", ""]
    lines += [descriptions.markdown_table(d) for d in described]
  plots = [name for name in results["files"] if name.endswith(".png")]
  if plots:
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
  lines += ["## Settings", ""] + [f"- {name}: `{json.dumps(value)}`" for name, value in results["settings"].items()]
  return "\n".join(lines) + "\n"


def _summary_table(results: dict[str, Any], tag: str) -> list[str]:
  """The per-method table, one row per method as in the paper's Table 2, best score first."""
  baseline = results["baseline"]
  wins = {row["method"]: row["winrate"] for row in results["winrates"] or []}
  score = "Overall score (proxy judge)" if results["judge"]["is_proxy"] else "Overall score"
  header = ["Method", score, "95% CI", "Concept", "Instruct", "Fluency", "Perplexity", "Concepts"]
  if baseline is not None:
    header.insert(-1, f"Winrate vs {baseline}")
  rows = []
  for row in results["summary"]:
    cells = [_cell(row["method"]), _number(row["score"]), f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]",
             _number(row["concept_rating"]), _number(row["instruction_rating"]), _number(row["fluency_rating"]),
             _number(row["perplexity"], ".2f"), str(row["num_concepts"])]
    if baseline is not None:
      winrate = wins.get(row["method"])
      cells.insert(-1, "–" if winrate is None else f"{100 * winrate:.1f}%")
    rows.append(cells)
  steered = {row["method"] for row in results["summary"]}
  rows += [[_cell(m)] + ["n/a"] + ["–"] * (len(header) - 2) for m in results["methods"] if m not in steered]
  note = ("Overall score: per generation the harmonic mean of the three 0–2 ratings (0 if any is 0), averaged over "
          "the held-out instructions at the selected factor, then over concepts.")
  return [f"## Steering (AxBench Table 2 layout){tag}", ""] + _table(header, rows) + [note, ""]


def _concept_table(concepts: dict[int, str], methods: list[str], value: Callable[[str, int], str]) -> list[str]:
  """A concept-by-method table whose cells are value(method, concept_id)."""
  rows = [[str(concept_id), _cell(name), *(value(method, concept_id) for method in methods)]
          for concept_id, name in concepts.items()]
  return _table(["Concept", "Name", *map(_cell, methods)], rows)


def _detection_tables(aurocs: dict[str, Any], concepts: dict[int, str], every: list[str]) -> list[str]:
  """Mean AUROC per method (n/a for the methods of `every` without detection), then AUROC per concept and method."""
  methods = list(aurocs)
  lines = ["## Concept detection (AUROC)", ""]
  lines += _table(["Method", "Mean AUROC", "Concepts"],
                  [[_cell(method), _number(aurocs[method]["roc_auc"]), str(aurocs[method]["num_concepts"])]
                   for method in methods] + [[_cell(m), "n/a", "–"] for m in every if m not in aurocs])
  per_concept = {(method, entry["concept_id"]): entry["roc_auc"] for method in methods
                 for entry in aurocs[method]["concepts"]}
  ids = dict.fromkeys(concept_id for _, concept_id in per_concept)
  lines += _table(["Concept", "Name", *map(_cell, methods)],
                  [[str(concept_id), _cell(concepts.get(concept_id, "")),
                    *(_number(per_concept.get((method, concept_id))) for method in methods)] for concept_id in ids])
  return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  """A Markdown table: left-aligned first two columns' text, right-aligned numbers."""
  align = ["---" if index == 0 or header[index] == "Name" else "--:" for index in range(len(header))]
  return ["| " + " | ".join(cells) + " |" for cells in (header, align, *rows)] + [""]


def _factor_plot(mean_curves: pd.DataFrame, summary: pd.DataFrame, baseline: str | None, proxy: bool) -> bytes:
  """Mean over concepts of score and each rating vs factor: a row per method with factors, select and test lines."""
  steered = mean_curves[mean_curves["factor"].notna()]
  order = [method for method in summary["method"] if method in set(steered["method"])]
  reference = None if baseline is None else summary.set_index("method").loc[baseline]
  figure = _figure(3.0 * len(PANELS), 2.2 * len(order))
  axes = figure.subplots(len(order), len(PANELS), squeeze=False, sharex="row", sharey=True,
                         gridspec_kw={"hspace": 0.45, "wspace": 0.08})
  for row, method in enumerate(order):
    curves = steered[steered["method"] == method]
    for column, (measure, title) in enumerate(PANELS):
      ax = axes[row, column]
      for split, style in (("select", "o-"), ("test", "s--")):
        line = curves[curves["split"] == split]
        ax.plot(line["factor"], line[measure], style, markersize=3, label=f"{split} split")
      if reference is not None:
        ax.axhline(reference[measure], color="grey", linestyle=":", label=f"{baseline} held-out")
      ax.set_ylim(-0.05, 2.05)
      ax.set_title(title if row == 0 else "", fontsize=9)
      ax.set_xlabel("steering factor" if row == len(order) - 1 else "", fontsize=8)
      ax.tick_params(labelsize=7)
    axes[row, 0].set_ylabel(method, fontsize=9)
  axes[0, 0].legend(fontsize=7)
  figure.suptitle("Steering score vs factor, mean over concepts" + (" (offline proxy judge)" if proxy else ""))
  return _png(figure)


def _score_bars(summary: pd.DataFrame, proxy: bool) -> bytes:
  """Each method's mean held-out score over concepts with its bootstrap 95% CI, best first."""
  figure = _figure(max(4.0, 0.6 * len(summary) + 1.5), 3.2)
  ax = figure.subplots()
  low, high = summary["score"] - summary["ci_low"], summary["ci_high"] - summary["score"]
  ax.bar(summary["method"], summary["score"], yerr=[low.clip(lower=0), high.clip(lower=0)], capsize=3,
         color="tab:blue")
  ax.set_ylim(0, 2.05)
  ax.set_ylabel("held-out score (0-2)", fontsize=8)
  ax.tick_params(axis="x", labelrotation=45, labelsize=7)
  ax.set_title("Score per method, 95% CI over concepts" + (" (offline proxy judge)" if proxy else ""), fontsize=9)
  return _png(figure)


def _roc_plot(detection: dict[str, dict], aurocs: dict[str, Any]) -> bytes:
  """Detection ROC curves: a panel per method, a curve per concept."""
  methods = list(detection)
  columns = min(3, len(methods))
  rows = math.ceil(len(methods) / columns)
  figure = _figure(3.4 * columns, 3.2 * rows)
  axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw={"hspace": 0.5, "wspace": 0.3}).ravel()
  for ax, method in zip(axes, methods):
    entries = detection[method]["concepts"]
    for entry in entries:
      ax.plot(entry["roc"]["fpr"], entry["roc"]["tpr"], linewidth=1, alpha=0.7, label=str(entry["concept_id"]))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_title(f"{method}: mean AUROC {_number(aurocs[method]['roc_auc'])}", fontsize=9)
    ax.set_xlabel("false positive rate", fontsize=8)
    ax.set_ylabel("true positive rate", fontsize=8)
    ax.tick_params(labelsize=7)
    if len(entries) <= 8:
      ax.legend(title="concept", fontsize=6, title_fontsize=7)
  for ax in axes[len(methods):]:
    ax.set_visible(False)
  figure.suptitle("Concept detection ROC curves")
  return _png(figure)


def training_loss_plot(records: dict[str, pd.DataFrame]) -> bytes:
  """Training loss per step: a panel per method, a curve per concept (a retrained concept's second run dashed)."""
  methods = list(records)
  figure = _figure(3.6 * len(methods), 3.0)
  axes = figure.subplots(1, len(methods), squeeze=False, gridspec_kw={"wspace": 0.3}).ravel()
  for ax, method in zip(axes, methods):
    record = records[method]
    for (concept, remedy), rows in record.groupby(["concept_id", record.get("remedy", pd.Series("", record.index))
                                                   .fillna("")], sort=True):
      ax.plot(rows["step"], rows["loss"], linewidth=1, alpha=0.7, linestyle="--" if remedy else "-",
              label=f"{concept}{' (' + remedy + ')' if remedy else ''}")
    ax.set_title(f"{method}: training loss", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    if record["concept_id"].nunique() <= 8:
      ax.legend(title="concept", fontsize=6, title_fontsize=7)
  figure.suptitle("Training loss per concept")
  return _png(figure)


def _figure(panels_width: float, panels_height: float) -> Figure:
  """A figure of the given panel area in inches plus fixed margins (cheaper than constrained layout at 50 panels)."""
  left, right, bottom, top = 0.8, 0.2, 0.6, 0.7
  width, height = panels_width + left + right, panels_height + bottom + top
  figure = Figure(figsize=(width, height))
  figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)
  return figure


def _png(figure: Figure) -> bytes:
  """The figure rendered to PNG bytes on an Agg canvas."""
  FigureCanvasAgg(figure)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  return buffer.getvalue()


def _detection_aurocs(detection: Any) -> dict[str, Any]:
  """Per method: mean AUROC over concepts where defined, their count, and each concept's AUROC."""
  if not isinstance(detection, Mapping) or not detection:
    raise AxjaxError("detection must map each method to its detection_report output")
  aurocs = {}
  for method, report in detection.items():
    entries = report.get("concepts") if isinstance(report, Mapping) else None
    if not entries or not all(isinstance(entry, Mapping) and isinstance(entry.get("roc"), Mapping)
                              and {"roc_auc", "fpr", "tpr"} <= set(entry["roc"]) and "concept_id" in entry
                              for entry in entries):
      raise AxjaxError(f"the detection report of method {method!r} lacks per-concept ROC results "
                       f"(expected detection_report output)")
    per_concept = [_plain({"concept_id": entry["concept_id"], "roc_auc": entry["roc"]["roc_auc"]}, "detection")
                   for entry in entries]
    defined = [entry["roc_auc"] for entry in per_concept if entry["roc_auc"] is not None]
    aurocs[str(method)] = {"roc_auc": float(np.mean(defined)) if defined else None,
                           "num_concepts": len(defined), "concepts": per_concept}
  return aurocs


def _concept_names(heldout: list[dict[str, Any]]) -> dict[int, str]:
  """concept_id -> concept name, in concept_id order."""
  return dict(sorted({row["concept_id"]: row["concept"] for row in heldout}.items()))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
  """The frame's rows as JSON-ready dicts (NaN as None)."""
  return _plain(frame.to_dict("records"), "a results table")


def _plain(value: Any, where: str) -> Any:
  """JSON-ready copy: numpy scalars to Python, tuples to lists, NaN and inf to None; anything else is refused."""
  if isinstance(value, Mapping):
    return {str(key): _plain(item, where) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(item, where) for item in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if value is None or isinstance(value, str):
    return value
  raise AxjaxError(f"{where} holds a {type(value).__name__} value, which results.json cannot store")


def _number(value: Any, spec: str = ".3f") -> str:
  """A number for a table cell; – for a missing one."""
  return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _cell(text: Any) -> str:
  """Text made safe for one Markdown table cell."""
  return str(text).replace("|", "\\|").replace("\n", " ")
