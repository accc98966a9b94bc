"""Fixed-shape tokenised examples, built exactly as AxBench builds them, as numpy arrays.

Per-concept training sets share their rows: the 72 pool negatives of a genre are the same for every concept
of that genre, so each training row is tokenised once into [U, T] arrays and per-concept [C, N] indices
select rows. A frozen model can then run once over the U rows. T is the longest example plus one (AxBench's
collator always appends a pad token) rounded up to a multiple of 32, so every row ends in padding.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from axjax.data import chat_format
from axjax.data.axbench_format import AxbenchData
from axjax.errors import AxjaxError

LENGTH_MULTIPLE = 32
AXBENCH_MAX_LENGTH = 1024  # make_data_module tokenises with max_length=1024, truncation=True
POSITIONS = ("all", "all_prompt")


@dataclasses.dataclass(frozen=True, eq=False)
class ConceptExamples:
  """Per-concept example sets over shared rows: [U, T] arrays tokenised once, [C, N] indices into them."""

  concept_ids: np.ndarray  # [C] int32
  index: np.ndarray  # [C, N] int32 rows of the [U, T] arrays, AxBench's order; padding points at an all-pad row
  labels: np.ndarray  # [C, N] int32: 1 positive, 0 negative (0 on padding)
  row_valid: np.ndarray  # [C, N] bool: False where a concept has fewer than N examples
  texts: tuple[str, ...]  # [U] the strings that were tokenised ('' for the padding row)
  tokens: np.ndarray  # [U, T] int32: BOS first, right-padded with the pad id, at least one pad per row
  attention_mask: np.ndarray  # [U, T] bool: real tokens

  def per_concept(self, name: str) -> np.ndarray:
    """A [U, T] array ('tokens', 'attention_mask' or one of the masks) gathered to [C, N, T]."""
    return getattr(self, name)[self.index]

  def shared_rows(self, positions: np.ndarray, concepts: np.ndarray | None = None) -> np.ndarray:
    """Maps per-concept positions [C, B] (from `batching.minibatches`) to rows [C, B] of the [U, T] arrays;
    `concepts` picks the concepts (positions along C) that `positions` are for (default: all)."""
    index = self.index if concepts is None else self.index[concepts]
    return np.take_along_axis(index, positions, axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class BinarizedExamples(ConceptExamples):
  """Training sets of DiffMean, PCA, LAT, LinearProbe (AxBench's binarize_dataset=True)."""

  score_mask: np.ndarray  # [U, T] bool: real tokens at positions >= prefix_length (DiffMean/PCA/LAT statistics)
  probe_mask: np.ndarray  # [U, T] bool: real tokens at positions >= 1 (probe.make_data_module's locations)
  prefix_length: int


@dataclasses.dataclass(frozen=True, eq=False)
class LMExamples(ConceptExamples):
  """Training sets of the output-loss methods LsReFT and SSV (binarize_dataset=False)."""

  loss_mask: np.ndarray  # [U, T] bool: target tokens (the output); logits at t-1 predict the token at t
  intervention_mask: np.ndarray  # [U, T] bool: positions the intervention acts on
  prompt_lengths: np.ndarray  # [U] int32: tokens in the prompt alone (BOS included), where the loss starts
  prefix_length: int  # first position interventions touch: the chat prefix, or 0 with exclude_prefix=False


@dataclasses.dataclass(frozen=True, eq=False)
class LatentEvalExamples:
  """Every latent_eval_data row (in AxbenchData.latent_eval's order) for concept-detection scoring."""

  texts: tuple[str, ...]  # [E] chat-formatted input and output, without BOS
  tokens: np.ndarray  # [E, T] int32
  attention_mask: np.ndarray  # [E, T] bool
  score_mask: np.ndarray  # [E, T] bool: real tokens at positions >= prefix_length (predict_latent's positions)
  concept_ids: np.ndarray  # [E] int32
  categories: tuple[str, ...]  # [E] 'positive', 'negative' or 'hard negative'
  labels: np.ndarray  # [E] int32: 1 for positives
  prefix_length: int


def _encode(tokenizer, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
  """Token ids with BOS, as AxBench's `tokenizer(text, max_length=..., truncation=True)`."""
  if max_length is not None and max_length < 1:
    raise AxjaxError(f"max_length must be a positive number of tokens, not {max_length!r}")
  if not texts:
    return []
  return [ids[:max_length] for ids in tokenizer(list(texts))["input_ids"]]


def _pad(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded [R, T] int32 tokens and [R] lengths, T = (longest + 1) rounded up to LENGTH_MULTIPLE."""
  lengths = np.array([len(x) for x in ids], np.int32)
  width = -(-(int(lengths.max()) + 1) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
  tokens = np.full((len(ids), width), pad_id, np.int32)
  for r, x in enumerate(ids):
    tokens[r, :len(x)] = x
  return tokens, lengths


def _span(start, stop, width: int) -> np.ndarray:
  """[R, width] bool, True at positions start[r] <= t < stop[r]."""
  t = np.arange(width)[None, :]
  return (t >= np.asarray(start).reshape(-1, 1)) & (t < np.asarray(stop).reshape(-1, 1))


def _pad_id(tokenizer) -> int:
  if tokenizer.pad_token_id is None:
    raise AxjaxError("the tokenizer has no pad token, which AxBench's right padding needs")
  return int(tokenizer.pad_token_id)


def _concept_sets(data: AxbenchData, concept_ids, max_examples, positives_only: bool):
  """Concept ids, the train rows they use (each once, first-seen order) and per concept its shared rows and labels."""
  ids = [c.concept_id for c in data.concepts] if concept_ids is None else [data.concept(int(c)).concept_id
                                                                         for c in concept_ids]
  if not ids:
    raise AxjaxError("concept_ids is empty: name at least one concept to build examples for")
  shared: dict[int, int] = {}  # row of data.train -> shared row
  rows, labels = [], []
  for cid in ids:
    train_rows, lab = data.training_row_ids(cid, max_examples)
    if positives_only:
      train_rows, lab = train_rows[lab == 1], lab[lab == 1]
    rows.append([shared.setdefault(int(r), len(shared)) for r in train_rows])
    labels.append(lab)
  used = data.train.iloc[list(shared)]
  return np.array(ids, np.int32), used["input"].tolist(), used["output"].tolist(), rows, labels


def _index(rows: list[list[int]], labels: list[np.ndarray], num_shared: int):
  """[C, N] index, labels, validity, and 1 if short concepts point at row `num_shared` (an extra all-pad row)."""
  n = max(len(r) for r in rows)
  index = np.full((len(rows), n), num_shared, np.int32)
  lab = np.zeros((len(rows), n), np.int32)
  valid = np.zeros((len(rows), n), bool)
  for c, (r, l) in enumerate(zip(rows, labels)):
    index[c, :len(r)], lab[c, :len(l)], valid[c, :len(r)] = r, l, True
  return index, lab, valid, int(not valid.all())


def binarized_examples(data: AxbenchData, tokenizer, *, concept_ids: Sequence[int] | None = None,
                       max_examples: int | None = None,
                       max_length: int | None = AXBENCH_MAX_LENGTH) -> BinarizedExamples:
  """Each concept's 72 positives then its genre's 72 pool negatives, formatted as AxBench's binarized data.

  Text: chat template (user=input, assistant=output, generation prompt added), BOS and suffix dropped,
  decoded, then tokenised again with BOS (for Gemma this round trip reproduces the template's tokens).
  """
  cids, inputs, outputs, rows, labels = _concept_sets(data, concept_ids, max_examples, positives_only=False)
  index, lab, valid, needs_pad = _index(rows, labels, len(inputs))
  texts = chat_format.binarized_texts(tokenizer, inputs, outputs)
  ids = _encode(tokenizer, texts, max_length) + ([[]] if needs_pad else [])
  tokens, lengths = _pad(ids, _pad_id(tokenizer))
  prefix = chat_format.prefix_length(tokenizer)
  width = tokens.shape[1]
  return BinarizedExamples(
      concept_ids=cids, index=index, labels=lab, row_valid=valid, texts=tuple(texts) + ("",) * needs_pad,
      tokens=tokens, attention_mask=_span(0, lengths, width), score_mask=_span(prefix, lengths, width),
      probe_mask=_span(1, lengths, width), prefix_length=prefix)


def lm_examples(data: AxbenchData, tokenizer, *, concept_ids: Sequence[int] | None = None,
                train_on_negative: bool = False, positions: str = "all_prompt", exclude_prefix: bool = True,
                max_examples: int | None = None, max_length: int | None = AXBENCH_MAX_LENGTH) -> LMExamples:
  """Output-loss examples as AxBench's data_utils.make_data_module builds them (defaults are AxBench's).

  Tokens: tokenizer(prompt + output) with BOS, prompt = chat-templated user turn plus generation prompt,
  output = the raw response. Nothing follows the output: for Gemma AxBench appends neither <eos> nor
  <end_of_turn> (its suffix rule is Llama-only). The loss starts at len(tokenizer(prompt)), counted as
  AxBench does even where the prompt's last "\\n" merges with an output starting with whitespace.
  Interventions act on [prefix_length, full length) for positions="all" and [prefix_length, prompt length)
  for "all_prompt"; exclude_prefix=False (AxBench's exclude_bos=False) starts them at 0.
  """
  if positions not in POSITIONS:
    raise AxjaxError(f"positions must be one of {', '.join(POSITIONS)}, not {positions!r}")
  cids, inputs, outputs, rows, labels = _concept_sets(data, concept_ids, max_examples,
                                                      positives_only=not train_on_negative)
  index, lab, valid, needs_pad = _index(rows, labels, len(inputs))
  prompts = chat_format.prompt_texts(tokenizer, inputs)
  texts = [prompt + output for prompt, output in zip(prompts, outputs)] + [""] * needs_pad
  prompt_lengths = np.array([len(x) for x in _encode(tokenizer, prompts, max_length)] + [0] * needs_pad, np.int32)
  tokens, lengths = _pad(_encode(tokenizer, texts[:len(inputs)], max_length) + [[]] * needs_pad, _pad_id(tokenizer))
  prefix = chat_format.prefix_length(tokenizer) if exclude_prefix else 0
  width = tokens.shape[1]
  stop = lengths if positions == "all" else np.minimum(prompt_lengths, lengths)
  return LMExamples(
      concept_ids=cids, index=index, labels=lab, row_valid=valid, texts=tuple(texts), tokens=tokens,
      attention_mask=_span(0, lengths, width), loss_mask=_span(prompt_lengths, lengths, width),
      intervention_mask=_span(prefix, stop, width), prompt_lengths=prompt_lengths,
      prefix_length=prefix)


def latent_eval_examples(data: AxbenchData, tokenizer, *, max_length: int | None = None) -> LatentEvalExamples:
  """Every latent-eval row formatted as AxBench's inference.py does (no truncation by default, like predict_latent)."""
  df = data.latent_eval
  if df is None:
    raise AxjaxError(f"{data.folder} has no inference/latent_eval_data.parquet to evaluate detection on")
  texts = chat_format.eval_texts(tokenizer, df["input"].tolist(), df["output"].tolist())
  tokens, lengths = _pad(_encode(tokenizer, texts, max_length), _pad_id(tokenizer))
  prefix = chat_format.prefix_length(tokenizer)
  width = tokens.shape[1]
  categories = tuple(df["category"].tolist())
  return LatentEvalExamples(
      texts=tuple(texts), tokens=tokens, attention_mask=_span(0, lengths, width),
      score_mask=_span(prefix, lengths, width), concept_ids=df["concept_id"].to_numpy(np.int32),
      categories=categories, labels=np.array([c == "positive" for c in categories], np.int32), prefix_length=prefix)
