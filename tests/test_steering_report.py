"""The steering report: results.json matches the scoring functions, report.md labels proxy judges, PNGs are real."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from axjax.errors import AxjaxError
from axjax.evaluation import detection_report
from axjax.steering_eval import report
from axjax.steering_eval.scores import heldout_scores, method_summary, select_factors, winrates

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONCEPTS = {3: "cats", 7: "rain | weather", 9: "music"}
FACTORS = {"DiffMean": (0.4, 1.0, 2.0), "ReFT-r1": (0.4, 1.0, 2.0), "Prompt": (math.nan,)}


def rated_table(methods=FACTORS, seed=0) -> pd.DataFrame:
  """Random 0-2 ratings for every method, concept, factor and instruction (0-4 select, 5-9 test)."""
  rng = np.random.default_rng(seed)
  rows = []
  for method, factors in methods.items():
    for concept_id, concept in CONCEPTS.items():
      for factor in factors:
        for instruction_id in range(10):
          ratings = rng.integers(0, 3, size=3)
          rows.append({"method": method, "concept_id": concept_id, "concept": concept, "factor": factor,
                       "instruction_id": instruction_id, "instruction": f"instruction {instruction_id}",
                       "split": "select" if instruction_id < 5 else "test", "generation": "text",
                       "concept_rating": ratings[0], "instruction_rating": ratings[1], "fluency_rating": ratings[2],
                       "perplexity": math.nan if math.isnan(factor) else float(rng.uniform(2, 20))})
  return pd.DataFrame(rows)


def detection_reports() -> dict[str, dict]:
  rng = np.random.default_rng(1)
  categories = np.tile(["positive"] * 12 + ["negative"] * 12 + ["hard negative"] * 4, len(CONCEPTS))
  row_concepts = np.repeat(list(CONCEPTS), 28)
  reports = {}
  for method, signal in (("DiffMean", 1.5), ("ReFT-r1", 0.5)):
    scores = rng.normal(size=(len(row_concepts), len(CONCEPTS))) + signal * (categories == "positive")[:, None]
    reports[method] = detection_report(scores, row_concepts, categories, list(CONCEPTS), imbalance_factor=None)
  return reports


def write(folder, df=None, *, proxy=True, baseline="Prompt", detection=None, name=None):
  return report.write_report(str(folder), rated_table() if df is None else df,
                             judge_name=name or ("proxy:wordllama-ppl-v1" if proxy else "openai:gpt-4o-mini"),
                             judge_is_proxy=proxy, judge_usage={"calls": 12, "cached": 3}, baseline=baseline,
                             detection=detection, settings={"model": "gemma-3-270m", "layers": (6,), "seed": 42})


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  """One full report (proxy judge, baseline, detection), written once: (folder, returned results, rated table)."""
  folder = tmp_path_factory.mktemp("report")
  return folder, write(folder, detection=detection_reports()), rated_table()


def plain(frame: pd.DataFrame) -> list[dict]:
  """A frame's records as results.json stores them: NaN as None."""
  return [{key: None if isinstance(value, float) and math.isnan(value) else value for key, value in record.items()}
          for record in frame.to_dict("records")]


def strict_json(path):
  def refuse(constant):
    raise ValueError(f"results.json holds {constant}")
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


def test_files_exist_and_results_round_trip(full):
  folder, returned, _ = full
  assert sorted(path.name for path in folder.iterdir()) == ["detection_roc.png", "method_scores.png", "report.md",
                                                              "results.json", "steering_factors.png"]
  assert strict_json(folder / "results.json") == returned
  assert returned["files"] == ["results.json", "report.md", "method_scores.png", "steering_factors.png",
                               "detection_roc.png"]
  assert returned["judge"] == {"name": "proxy:wordllama-ppl-v1", "is_proxy": True,
                               "usage": {"calls": 12, "cached": 3}}
  assert returned["settings"] == {"model": "gemma-3-270m", "layers": [6], "seed": 42}
  assert returned["bootstrap"] == {"n_boot": 1000, "seed": 0, "confidence": 0.95, "over": "concepts"}


def test_results_match_the_scoring_functions(full):
  folder, _, df = full
  results = strict_json(folder / "results.json")
  selection = select_factors(df)
  heldout = heldout_scores(df, selection)
  assert results["selection"] == plain(selection)
  assert results["heldout"] == plain(heldout)
  assert results["summary"] == plain(method_summary(heldout, n_boot=1000, seed=0))
  assert results["winrates"] == plain(winrates(heldout, "Prompt"))
  assert results["baseline"] == "Prompt"
  assert [row["method"] for row in results["summary"]] == sorted(
      FACTORS, key=lambda method: -heldout[heldout.method == method].score.mean())
  curve = [row for row in results["factor_curves"]
           if (row["method"], row["split"], row["factor"]) == ("DiffMean", "test", 1.0)]
  expected = df[(df.method == "DiffMean") & (df.split == "test") & (df.factor == 1.0)]
  per_concept = [group.perplexity.mean() for _, group in expected.groupby("concept_id")]
  assert curve[0]["perplexity"] == pytest.approx(np.mean(per_concept)) and curve[0]["num_concepts"] == 3


def test_detection_aurocs_in_results_and_report(full):
  folder, results, _ = full
  reports = detection_reports()
  for method, detected in reports.items():
    aurocs = [entry["roc"]["roc_auc"] for entry in detected["concepts"]]
    assert results["detection"][method]["roc_auc"] == pytest.approx(np.mean(aurocs))
    assert results["detection"][method]["num_concepts"] == 3
    assert [entry["roc_auc"] for entry in results["detection"][method]["concepts"]] == aurocs
  text = (folder / "report.md").read_text()
  assert "## Concept detection (AUROC)" in text
  assert f"| DiffMean | {results['detection']['DiffMean']['roc_auc']:.3f} | 3 |" in text


def test_report_tables(full):
  folder, results, _ = full
  text = (folder / "report.md").read_text()
  wins = {row["method"]: row["winrate"] for row in results["winrates"]}
  for row in results["summary"]:
    assert (f"| {row['method']} | {row['score']:.3f} | [{row['ci_low']:.3f}, {row['ci_high']:.3f}] | "
            f"{row['concept_rating']:.3f} |") in text
    assert f"| {100 * wins[row['method']]:.1f}% | 3 |" in text
  assert "Winrate vs Prompt" in text
  assert "| 7 | rain \\| weather |" in text  # a pipe in a concept name does not break the table
  factors = {(row["method"], row["concept_id"]): row["factor"] for row in results["selection"]}
  order = [row["method"] for row in results["summary"]]
  selected_row = "| 3 | cats | " + " | ".join("–" if factors[(method, 3)] is None else f"{factors[(method, 3)]:g}"
                                              for method in order) + " |"
  assert selected_row in text
  assert "![steering_factors.png](steering_factors.png)" in text


def test_proxy_warning_only_for_proxy_judges(full, tmp_path):
  write(tmp_path, rated_table({"Prompt": (math.nan,), "LoRA": (math.nan,)}), proxy=False)  # no plots: quick
  proxy_text, real_text = (full[0] / "report.md").read_text(), (tmp_path / "report.md").read_text()
  assert f"> {report.PROXY_WARNING}" in proxy_text
  assert "not comparable to the paper's GPT-4o-mini judge" in proxy_text
  assert "Overall score (proxy judge)" in proxy_text
  assert "## Steering (AxBench Table 2 layout) — offline proxy judge, not comparable to the paper" in proxy_text
  assert "proxy" not in real_text.lower() and "not comparable" not in real_text
  assert "Judge: `openai:gpt-4o-mini`; usage: calls 12, cached 3" in real_text


def test_pngs_are_valid_and_non_trivial(full):
  for name, least in (("steering_factors.png", 20_000), ("detection_roc.png", 20_000), ("method_scores.png", 10_000)):
    data = (full[0] / name).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > least


def test_without_baseline_detection_or_factors(tmp_path):
  results = write(tmp_path, rated_table({"Prompt": (math.nan,), "LoRA": (math.nan,)}), baseline=None)
  assert sorted(path.name for path in tmp_path.iterdir()) == ["method_scores.png", "report.md", "results.json"]
  assert results["winrates"] is None and results["detection"] is None and results["baseline"] is None
  text = (tmp_path / "report.md").read_text()
  assert "Winrate" not in text and "AUROC" not in text and "steering_factors.png" not in text
  assert all(row["factor"] is None for row in results["selection"])


def test_bad_report_arguments(tmp_path):
  with pytest.raises(AxjaxError, match=r"baseline 'SAE' is not one of the evaluated methods"):
    write(tmp_path, baseline="SAE")
  with pytest.raises(AxjaxError, match=r"the detection report of method 'DiffMean' lacks per-concept ROC results"):
    write(tmp_path, detection={"DiffMean": {"mean": {}}})
  with pytest.raises(AxjaxError, match=r"settings holds a object value, which results.json cannot store"):
    report.write_report(str(tmp_path), rated_table(), judge_name="j", judge_is_proxy=False, judge_usage={},
                        baseline=None, detection=None, settings={"bad": object()})
  with pytest.raises(AxjaxError, match=r"the rated table lacks column\(s\) \['split'\]"):
    write(tmp_path, rated_table().drop(columns="split"))
  assert list(tmp_path.iterdir()) == []  # nothing written by a refused call
