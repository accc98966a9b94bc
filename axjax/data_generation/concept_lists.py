"""The concept list a user asks data for, in AxBench's three formats (its generate.py `load_concepts`).

- `.txt`: one description per line (blank lines skipped); no reference.
- `.csv`: rows `<description>,<reference URL>`.
- `.json`: a Neuronpedia export (records with modelId, layer, index, description); the first description of each
  feature index is kept, its reference https://www.neuronpedia.org/<modelId>/<layer>/<index>.
AxBench also accepts a `.txt` of Neuronpedia links and fetches their descriptions; axjax runs offline, so those are
refused with what to pass instead. An empty list, a repeated concept or another format: one sentence each.
"""

from __future__ import annotations

import csv
import json
import os
from typing import NamedTuple

from axjax.errors import AxjaxError

FORMATS = (".txt", ".csv", ".json")


class ListedConcept(NamedTuple):
  description: str
  ref: str | None  # where the concept comes from (a Neuronpedia feature URL), if known


def read_concept_list(path: str) -> list[ListedConcept]:
  """The concepts of `path`, in file order, checked."""
  extension = os.path.splitext(path)[1].lower()
  if extension not in FORMATS:
    raise AxjaxError(f"{path} is not a concept list axjax reads: use .txt (one description per line), .csv "
                     "(description,reference) or .json (a Neuronpedia export)")
  if not os.path.isfile(path):
    raise AxjaxError(f"there is no concept list at {path}")
  with open(path, newline="") as f:
    concepts = {".txt": _text, ".csv": _csv, ".json": _neuronpedia}[extension](f, path)
  if not concepts:
    raise AxjaxError(f"{path} lists no concepts")
  first: dict[str, int] = {}
  for number, concept in enumerate(concepts, 1):
    if concept.description in first:
      raise AxjaxError(f"{path} lists the concept {concept.description!r} twice (entries {first[concept.description]} "
                       f"and {number}): each concept gets one id")
    first[concept.description] = number
  return concepts


def _text(f, path: str) -> list[ListedConcept]:
  lines = [line.strip() for line in f]
  lines = [line for line in lines if line]
  if any(line.startswith(("http://", "https://")) for line in lines):
    raise AxjaxError(f"{path} lists links, whose descriptions AxBench fetches from Neuronpedia; axjax runs offline: "
                     "pass a Neuronpedia JSON export or a CSV of description,link instead")
  return [ListedConcept(line, None) for line in lines]


def _csv(f, path: str) -> list[ListedConcept]:
  out = []
  for number, row in enumerate(csv.reader(f), 1):
    if not row or not any(cell.strip() for cell in row):
      continue
    if len(row) < 2 or not row[0].strip():
      raise AxjaxError(f"{path} row {number} is not description,reference")
    out.append(ListedConcept(row[0].strip(), row[1].strip() or None))
  return out


def _neuronpedia(f, path: str) -> list[ListedConcept]:
  try:
    records = json.load(f)
  except ValueError:
    raise AxjaxError(f"{path} is not JSON (a Neuronpedia export is a list of feature records)") from None
  if not isinstance(records, list):
    raise AxjaxError(f"{path} is not a Neuronpedia export: it should be a list of feature records")
  out, seen = [], set()
  for number, record in enumerate(records, 1):
    try:
      model, layer, index, description = (record[k] for k in ("modelId", "layer", "index", "description"))
    except (KeyError, TypeError):
      raise AxjaxError(f"{path} record {number} lacks modelId, layer, index or description") from None
    if index in seen:
      continue  # AxBench keeps a feature's first description
    seen.add(index)
    out.append(ListedConcept(str(description).strip(), f"https://www.neuronpedia.org/{model}/{layer}/{index}"))
  return out
