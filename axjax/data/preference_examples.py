"""RePS's training sequences: each positive prompt with the concept response y_c and with the model's own y.

Upstream's `make_preference_data_module` tokenises prompt + winner and prompt + loser of every pair. Both pairs of
an example (orig_add: y_c over y; orig_sub: y over y_c) use the same two sequences, so each is tokenised once:
`concept` holds prompt + y_c, `own` prompt + y, both built as `lm_examples` builds AxBench's (chat-templated
prompt with BOS, raw response, no end token; positives only), with the same [C, N] index into their shared rows.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from axjax.data.axbench_format import AxbenchData
from axjax.data.examples import LMExamples, lm_examples
from axjax.errors import AxjaxError


@dataclasses.dataclass(frozen=True, eq=False)
class PreferenceExamples:
  """The two sequences of every positive example: row index[c, n] of `concept` and of `own` hold the same prompt."""

  concept: LMExamples  # prompt + y_c (the dataset's concept response)
  own: LMExamples  # prompt + y (the model's own response)


def preference_examples(data: AxbenchData, tokenizer, responses: Mapping[str, str], *,
                        concept_ids: Sequence[int] | None = None, max_examples: int | None = None,
                        positions: str = "all") -> PreferenceExamples:
  """Both sequences of each concept's positives; `responses` maps each instruction to the model's own answer
  (`own_responses`). `positions`: where interventions act, as `lm_examples` ("all": prompt and response)."""
  options = dict(concept_ids=concept_ids, max_examples=max_examples, positions=positions, max_length=None)
  concept = lm_examples(data, tokenizer, **options)
  rows = positive_rows(data, concept.concept_ids, max_examples)
  instructions = data.train["input"].iloc[rows].tolist()
  if missing := [i for i in instructions if i not in responses]:
    raise AxjaxError(f"no own response for the training instruction {missing[0][:60]!r}: generate them with "
                     "own_responses first")
  output = data.train["output"].to_numpy(object).copy()
  output[rows] = [responses[i] for i in instructions]
  train = data.train.assign(output=output)
  own = lm_examples(dataclasses.replace(data, train=train), tokenizer, **options)
  width = max(concept.tokens.shape[1], own.tokens.shape[1])
  return PreferenceExamples(_widen(concept, width), _widen(own, width))


def positive_rows(data: AxbenchData, concept_ids: Sequence[int], max_examples: int | None = None) -> list[int]:
  """The training rows of the concepts' positives, sorted (file order)."""
  return sorted({int(r) for c in concept_ids for r, label in zip(*data.training_row_ids(int(c), max_examples))
                 if label == 1})


def positive_instructions(data: AxbenchData, concept_ids: Sequence[int], max_examples: int | None = None
                          ) -> list[str]:
  """The instructions of the concepts' positive training examples: what `own_responses` must answer."""
  return list(dict.fromkeys(data.train["input"].iloc[positive_rows(data, concept_ids, max_examples)]))


def _widen(examples: LMExamples, width: int) -> LMExamples:
  """The examples right-padded to `width` positions (pad tokens, False masks)."""
  extra = width - examples.tokens.shape[1]
  if not extra:
    return examples
  pad_id = int(examples.tokens[0, -1])  # every row ends in padding
  grow = lambda a, value: np.pad(a, ((0, 0), (0, extra)), constant_values=value)
  return dataclasses.replace(examples, tokens=grow(examples.tokens, pad_id),
                             attention_mask=grow(examples.attention_mask, False),
                             loss_mask=grow(examples.loss_mask, False),
                             intervention_mask=grow(examples.intervention_mask, False))
