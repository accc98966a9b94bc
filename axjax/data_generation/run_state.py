"""The generator's bookkeeping in its output folder, so a killed run resumes at the next concept with identical
output and a folder is never mixed from two concept lists.

- `generate/generation.json`: what the folder is generated for (the concept list, target model, LLM, seed, sizes);
  a rerun with anything else is refused before anything is written.
- `{generate,inference}/concepts/<id>.json`: one record per finished concept and mode, its rows or why it was
  skipped; a concept with a record is never asked again.
- `generate/summary.json`: counts per concept and every skipped concept; `generate/llm_usage.jsonl`: one line per
  run and mode with the LLM's calls, tokens and cost.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from axjax import atomic_files
from axjax.errors import AxjaxError

SETTINGS = os.path.join("generate", "generation.json")
RECORD_FOLDERS = {"train": "generate", "latent": "inference"}


def check_settings(folder: str, settings: dict[str, Any]) -> None:
  """Refuses, in one sentence, a folder generated with another concept list or other settings."""
  path = os.path.join(folder, SETTINGS)
  if not os.path.exists(path):
    if os.path.exists(os.path.join(folder, "generate", "metadata.jsonl")):
      raise AxjaxError(f"{folder} holds AxBench data that axjax did not generate: pass a new --output_dir")
    return
  try:
    saved = atomic_files.read_json(path)
  except ValueError:
    raise AxjaxError(f"{path} is not readable JSON: delete {folder} or pass a new --output_dir") from None
  if saved.get("concepts") != settings["concepts"]:
    raise AxjaxError(f"{folder} was generated for another concept list ({len(saved.get('concepts') or [])} "
                     f"concepts, first {(saved.get('concepts') or [['?']])[0][0]!r}): pass a new --output_dir")
  for key, value in settings.items():
    if saved.get(key) != value:
      raise AxjaxError(f"{folder} was generated with {key}={saved.get(key)!r}, not {value!r}: rerun with the "
                       "same settings to resume, or pass a new --output_dir")


def write_settings(folder: str, settings: dict[str, Any]) -> None:
  atomic_files.write_json(os.path.join(folder, SETTINGS), settings)


def _record_path(folder: str, mode: str, concept_id: int) -> str:
  return os.path.join(folder, RECORD_FOLDERS[mode], "concepts", f"{concept_id:06d}.json")


def read_record(folder: str, mode: str, concept_id: int) -> dict[str, Any] | None:
  """A finished concept's record of `mode` ("train" or "latent"), None if it is not finished."""
  path = _record_path(folder, mode, concept_id)
  return atomic_files.read_json(path) if os.path.exists(path) else None


def read_records(folder: str, mode: str, count: int) -> dict[int, dict[str, Any]]:
  """{concept id: record} of the first `count` concepts of `mode` finished so far."""
  return {cid: r for cid in range(count) if (r := read_record(folder, mode, cid)) is not None}


def write_record(folder: str, mode: str, concept_id: int, record: dict[str, Any]) -> None:
  atomic_files.write_json(_record_path(folder, mode, concept_id), record)


def append_usage(folder: str, mode: str, llm: str, usage: dict[str, float]) -> None:
  """One line of the LLM's usage in this run's `mode` (the file is rewritten whole, atomically)."""
  path = os.path.join(folder, "generate", "llm_usage.jsonl")
  before = open(path).read() if os.path.exists(path) else ""
  line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "mode": mode, "llm": llm, **usage})
  atomic_files.write_text(path, before + line + "\n")
