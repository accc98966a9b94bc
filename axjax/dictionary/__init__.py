"""Concept dictionaries ([C, d] rank-1 vectors + metadata): Orbax save/load and AxBench import, model-free."""

from axjax.dictionary.axbench_import import import_axbench_dictionary
from axjax.dictionary.store import (FORMAT_VERSION, Dictionary, DictionaryError, check_compatible, load_dictionary,
                                    save_dictionary)
