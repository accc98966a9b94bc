"""RePS's rule concepts, scored by code rather than a judge: 0-2, how far a response follows the rule.

Upstream (`axbench/evaluators/rule_judge.py`, `utils/constants.py: CONCEPT_TO_RULE`) names 25 rules; axjax keeps
the 20 whose check needs no downloaded NLP model and is not degenerate. Left out: past tense and passive voice
(stanza's parsers, fetched at run time), "at least 800 words" (beyond every generation length the protocol
uses), telephone numbers (upstream's pattern accepts any 7 digits) and double line breaks (any reply with two
paragraphs passes). The checks follow upstream's scoring: graded where it grades (share of upper-case or
lower-case words, of quoted words, hashtags out of 4, exclamation marks x 0.5), else 0 or 2 (1 for a phrase
present but not where the rule puts it). Language checks use `langdetect` with a fixed seed.
"""

from __future__ import annotations

import json
import re
from typing import Callable

import emoji

from axjax.errors import AxjaxError

_END = "<end_of_turn>"


def _words(text: str) -> list[str]:
  return text.replace(_END, "").split()


def _share(words: list[str], keep: Callable[[str], bool]) -> float:
  return 2.0 * sum(map(keep, words)) / len(words) if words else 0.0


def _language(code: str) -> Callable[[str], float]:
  def check(text: str) -> float:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException
    DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes it deterministic
    try:
      return 2.0 if detect(text.replace(_END, "")) == code else 0.0
    except LangDetectException:  # no letters to detect from
      return 0.0
  return check


def _emoji(text: str) -> float:
  count = sum(char in emoji.EMOJI_DATA for char in text)
  return 2.0 if count > 2 else 1.0 if count else 0.0


def _phrase(phrase: str, at_end: bool) -> Callable[[str], float]:
  def check(text: str) -> float:
    text = text.replace(_END, "").strip()
    placed = text.endswith(phrase) if at_end else text.startswith(phrase)
    return 2.0 if placed else 1.0 if phrase.rstrip("?") in text else 0.0
  return check


def _json(text: str) -> float:
  value = text.strip()
  for prefix in ("```json", "```Json", "```JSON", "```"):
    value = value.removeprefix(prefix)
  try:
    json.loads(value.removesuffix("```").strip())
  except ValueError:
    return 0.0
  return 2.0


def _sentences_end_in_y(text: str) -> float:
  sentences = [re.sub(r"[.!?,\s]", "", s) for s in re.split(r"[.!?]+", text) if s.strip()]
  sentences = [s for s in sentences if s]
  return 2.0 if sentences and all(s[-1].lower() == "y" for s in sentences) else 0.0


def _matches(pattern: str) -> Callable[[str], float]:
  return lambda text: 2.0 if re.search(pattern, text.replace(_END, ""), re.MULTILINE) else 0.0


_URL = r"http[s]?://(?:[a-zA-Z]|[0-9]|[$-_@.&+]|[!*\\(\\),]|(?:%[0-9a-fA-F][0-9a-fA-F]))+"
# Each rule's concept text (upstream's CONCEPT_TO_RULE key, the concept description a rule dataset uses) and check.
RULES: dict[str, Callable[[str], float]] = {
    "use only capital letters": lambda t: _share(_words(t), str.isupper),
    "make sure that words in your entire response are in all lowercase letters":
        lambda t: _share(_words(t), str.islower),
    "respond only in Chinese, and no other language is allowed": _language("zh-cn"),
    "respond only in Spanish, and no other language is allowed": _language("es"),
    "respond only in Korean, and no other language is allowed":
        lambda t: 2.0 if re.fullmatch(r"[\uac00-\ud7a3\s.,!?]+", t.strip()) else 0.0,
    "respond with emojis": _emoji,
    "include at least 4 hashtags, starting with '#'": lambda t: min(2.0, len(re.findall(r"#\w+", t)) / 4 * 2.0),
    "use exclamation marks in your response": lambda t: min(2.0, t.replace(_END, "").count("!") * 0.5),
    "include citations and references with urls": _matches(_URL),
    'first repeat "Here is my response", then give your answer': _phrase("Here is my response", at_end=False),
    'the very last sentence of your response should be "Is there anything else I can help with?"':
        _phrase("Is there anything else I can help with?", at_end=True),
    "every sentence ends with the letter y": _sentences_end_in_y,
    "include mutliple email addresses in your response": _matches(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    "include a postscript at the end of your response that starts with P.S.": _matches(r"P\.S\..*$"),
    "include both of the keywords 'beauty' and 'pretty'":
        lambda t: sum(k in t.lower() for k in ("beauty", "pretty")) / 2 * 2.0,
    "wrap your entire answer in JSON format": _json,
    "respond in number bullet list 1.\\n\\n2.\\n\\n and so on": _matches(r"\b\d+\."),
    "separate the paragraphs with ***": lambda t: 2.0 if "***" in t else 0.0,
    "wrap every word in your response with double quotation marks":
        lambda t: _share(_words(t), lambda w: w.startswith('"') and w.endswith('"')),
    "the response must include a specific date format (e.g., YYYY-MM-DD)":
        _matches(r"\b\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b"),
}


def rule_score(rule: str, text: str) -> float:
  """How far `text` follows `rule` (one of RULES), 0-2."""
  if rule not in RULES:
    raise AxjaxError(f"{rule!r} is not one of the {len(RULES)} rules scored by code (axjax.steering_eval.rules.RULES)")
  return float(RULES[rule](text))


def check_rules(concepts: list[str]) -> None:
  """Refuses, in one sentence, a concept list that is not made of rules (the rules evaluation needs them)."""
  unknown = [c for c in concepts if c not in RULES]
  if unknown:
    raise AxjaxError(f"the rules evaluation needs rule concepts and {unknown[0]!r} is not one of the {len(RULES)} "
                     "rules scored by code (axjax.steering_eval.rules.RULES): train on a rule dataset")
