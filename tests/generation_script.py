"""A scripted LLM for data-generation tests: it recognises which of AxBench's templates a prompt fills (by matching
the template with its fields as wildcards) and answers by fixed rules, so every template, the contrast filter and
the retry of unusable replies can be checked against a real HTTP server."""

from __future__ import annotations

import re

from axjax.data_generation import templates

CODE = "for loops in Python"
TEXT = "references to rental services"
FLAKY = "mentions of umbrellas"  # the first reply with the concept is empty: a retry (draw 1) recovers it
BROKEN = "the colour of silence"  # every reply with the concept is empty: the concept is skipped
SEED = 42  # the generator's default seed; the request's seed is SEED + draw


def _pattern(template: str) -> re.Pattern:
  """`template` with each {FIELD} a lazy wildcard (a repeated field must repeat its text)."""
  pieces, seen = [], set()
  for k, part in enumerate(re.split(r"\{([A-Z_]+)\}", template)):
    if k % 2 == 0:
      pieces.append(re.escape(part.replace("{{", "{").replace("}}", "}")))
    else:
      pieces.append(f"(?P={part})" if part in seen else f"(?P<{part}>.*?)")
      seen.add(part)
  return re.compile("".join(pieces), re.DOTALL)


PATTERNS = {name: _pattern(getattr(templates, name)) for name in dir(templates) if name.startswith("T_")}
MEANINGS = {"lease": "a new lease of life: renewed energy", "hire": "<NONE>", "brolly": "slang"}


def template_of(prompt: str) -> tuple[str, dict[str, str]]:
  """(template name, its fields) of a generation prompt."""
  found = [(name, m.groupdict()) for name, p in PATTERNS.items() if (m := p.fullmatch(prompt))]
  assert len(found) == 1, (prompt[:200], [n for n, _ in found])
  return found[0]


def reply(prompt: str, body: dict) -> str:
  """The scripted answer to a generation prompt (the stub server's `reply`)."""
  name, fields = template_of(prompt)
  draw = body.get("seed", SEED) - SEED
  concept = fields.get("CONCEPT", "")
  if name == "T_DETERMINE_GENRE":
    return "Code" if "Python" in concept else "Text"
  if name == "T_CONCEPT_TO_WORDS":
    return "lease\nhire\nbrolly\n"
  if name == "T_WORD_POLYSEMANTIC_MEANING":
    return MEANINGS[fields["WORD"]]
  if name == "T_FILTER_CONTRAST_CONCEPT":  # lease's other meaning is judged related to the code concept only
    return "Answer: <NO>" if concept == CODE else "They differ.\nAnswer: <YES>"
  if name == "T_RESPONSE_WITH_CONCEPT":
    if concept == BROKEN or (concept == FLAKY and draw == 0):
      return "  ''  "
    return f'"Here is {concept}, answering: {fields["INSTRUCTION"][:40]}"'
  if name == "T_RESPONSE_WITHOUT_CONCEPT":
    return f"A plain answer to: {fields['INSTRUCTION'][:40]}"
  if name == "T_RESPONSE_WITH_CONTRAST_CONCEPT":
    return f"<response> The {fields['WORD']} here means {fields['CONTRAST_CONCEPT'][:24]}."
  raise AssertionError(f"the generator should not ask {name}")
