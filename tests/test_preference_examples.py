"""RePS's sequences: row index[c, n] of both sets holds the same prompt, with the dataset's concept response
in `concept` and the model's own in `own`, tokenised as plain tokenizer(prompt + response) with BOS."""

import numpy as np
import pytest

from axjax.data.axbench_format import read_axbench
from axjax.data.chat_format import prompt_texts
from axjax.data.preference_examples import preference_examples
from axjax.errors import AxjaxError
from axjax.loading.load import embedded_gguf_path
from axjax.loading.tokenizer import gguf_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
  return gguf_tokenizer(embedded_gguf_path())


def test_both_sequences_of_each_positive(tokenizer):
  data = read_axbench("concept10/prod_2b_l20_v1", max_concepts=2)
  positives = data.train[data.train["category"] == "positive"]
  responses = {i: f"My own answer number {n}." for n, i in enumerate(positives["input"])}
  ex = preference_examples(data, tokenizer, responses, max_examples=6)
  assert ex.concept.tokens.shape == ex.own.tokens.shape
  np.testing.assert_array_equal(ex.concept.index, ex.own.index)
  assert ex.concept.index.shape == (2, 3) and ex.concept.row_valid.all()  # max_examples // 2 positives each
  for c, concept in enumerate(data.concepts):
    rows = positives[positives["output_concept"] == concept.name].head(3)
    for n, (instruction, output) in enumerate(zip(rows["input"], rows["output"])):
      prompt = prompt_texts(tokenizer, [instruction])[0]
      for examples, response in ((ex.concept, output), (ex.own, responses[instruction])):
        row = examples.index[c, n]
        want = tokenizer(prompt + response).input_ids
        np.testing.assert_array_equal(examples.tokens[row, :len(want)], want)
        assert examples.attention_mask[row].sum() == len(want)
        assert examples.loss_mask[row].sum() == len(want) - len(tokenizer(prompt).input_ids)
  with pytest.raises(AxjaxError, match="no own response for the training instruction"):
    preference_examples(data, tokenizer, {}, max_examples=6)
