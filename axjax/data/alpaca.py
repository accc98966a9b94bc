"""The 805 AlpacaEval instructions shipped with axjax (CC BY-NC 4.0; see alpaca_eval/SOURCE.md)."""

from __future__ import annotations

import json
import pathlib

INSTRUCTIONS = pathlib.Path(__file__).parent / "alpaca_eval" / "instructions.jsonl"


def alpaca_instructions() -> tuple[str, ...]:
  """The instructions in AlpacaEval's original order (AxBench's steering prompts)."""
  with open(INSTRUCTIONS, encoding="utf-8") as f:
    return tuple(json.loads(line)["instruction"] for line in f if line.strip())
