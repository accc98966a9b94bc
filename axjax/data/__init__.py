"""AxBench data: the shipped datasets, readers for AxBench's folder format, and fixed-shape tokenised examples."""

from axjax.data.alpaca import alpaca_instructions
from axjax.data.axbench_format import (AxbenchData, Concept, DataFormatError, builtin_datasets, read_axbench,
                                       read_concepts)
from axjax.data.batching import Minibatch, minibatches, steps_per_epoch
from axjax.data.chat_format import binarized_texts, eval_texts, prefix_length, prompt_texts, suffix_length
from axjax.data.examples import (BinarizedExamples, ConceptExamples, LatentEvalExamples, LMExamples,
                                 binarized_examples, latent_eval_examples, lm_examples)
