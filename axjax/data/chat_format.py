"""AxBench's chat formatting: chat prefix/suffix lengths and the three text forms its scripts feed the model.

With Gemma's template
`<bos><start_of_turn>user\\n{input}<end_of_turn>\\n<start_of_turn>model\\n{output}<end_of_turn>\\n`
(contents trimmed by the template) the prefix is 4 tokens (`<bos><start_of_turn>user\\n`) and the suffix 2
(`<end_of_turn>\\n`). Formatted texts drop the BOS token: tokenising them again re-adds it.
"""

from __future__ import annotations

from typing import Sequence


def _template_ids(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool) -> list[list[int]]:
  if not conversations:
    return []
  return tokenizer.apply_chat_template(conversations, tokenize=True, add_generation_prompt=add_generation_prompt,
                                       return_dict=False)


def _probe_pair(tokenizer) -> tuple[list[int], list[int]]:
  """AxBench's probe: the chat template of a user turn "1" and of a user turn "2", without generation prompt."""
  return tuple(_template_ids(tokenizer, [[{"role": "user", "content": s}] for s in ("1", "2")], False))


def prefix_length(tokenizer) -> int:
  """Tokens before the user's text (AxBench's get_prefix_length); positions below it are never scored."""
  a, b = _probe_pair(tokenizer)
  return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), 0)


def suffix_length(tokenizer) -> int:
  """Tokens after the user's text in one closed turn (AxBench's get_suffix_length)."""
  a, b = _probe_pair(tokenizer)
  return next((i for i, (x, y) in enumerate(zip(reversed(a), reversed(b))) if x != y), 0)


def _decode_all(tokenizer, ids: list[list[int]], start: int, drop_last: int) -> list[str]:
  return [tokenizer.decode(x[start:len(x) - drop_last]) for x in ids]


def binarized_texts(tokenizer, inputs: Sequence[str], outputs: Sequence[str]) -> list[str]:
  """Training texts of AxBench's binarized methods (train.py prepare_df, binarize=True).

  AxBench templates user=input, assistant=output WITH add_generation_prompt=True and then drops BOS and the
  last suffix_length tokens, so for Gemma each text ends `{output}<end_of_turn>\\n<start_of_turn>`.
  """
  convs = [[{"role": "user", "content": i}, {"role": "assistant", "content": o}] for i, o in zip(inputs, outputs)]
  return _decode_all(tokenizer, _template_ids(tokenizer, convs, True), 1, suffix_length(tokenizer))


def eval_texts(tokenizer, inputs: Sequence[str], outputs: Sequence[str]) -> list[str]:
  """Latent-evaluation texts (inference.py prepare_df): the same turns without a generation prompt.

  Dropping BOS and the suffix leaves `<start_of_turn>user\\n{input}<end_of_turn>\\n<start_of_turn>model\\n{output}`.
  """
  convs = [[{"role": "user", "content": i}, {"role": "assistant", "content": o}] for i, o in zip(inputs, outputs)]
  return _decode_all(tokenizer, _template_ids(tokenizer, convs, False), 1, suffix_length(tokenizer))


def prompt_texts(tokenizer, inputs: Sequence[str]) -> list[str]:
  """LM-training prompts (train.py prepare_df, binarize=False): the user turn plus the generation prompt, no BOS."""
  convs = [[{"role": "user", "content": i}] for i in inputs]
  return _decode_all(tokenizer, _template_ids(tokenizer, convs, True), 1, 0)
