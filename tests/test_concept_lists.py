"""Concept lists for the data generator in AxBench's formats (.txt, .csv, Neuronpedia .json) and the bad lists
refused in one sentence."""

import json

import pytest

from axjax.data_generation.concept_lists import ListedConcept, read_concept_list
from axjax.errors import AxjaxError


def test_text_csv_and_neuronpedia_lists(tmp_path):
  (tmp_path / "c.txt").write_text("references to rental services\n\n  scientific terms  \n")
  assert read_concept_list(str(tmp_path / "c.txt")) == [ListedConcept("references to rental services", None),
                                                        ListedConcept("scientific terms", None)]
  (tmp_path / "c.csv").write_text("rentals,https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/16038\n")
  assert read_concept_list(str(tmp_path / "c.csv")) == [
      ListedConcept("rentals", "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/16038")]
  export = [{"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "7", "description": " cats "},
            {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "7", "description": "felines"},
            {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "9", "description": "dogs"}]
  (tmp_path / "c.json").write_text(json.dumps(export))
  assert read_concept_list(str(tmp_path / "c.json")) == [  # a feature's first description only, as AxBench
      ListedConcept("cats", "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7"),
      ListedConcept("dogs", "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/9")]


@pytest.mark.parametrize("name, text, message", [
    ("empty.txt", "\n\n", "lists no concepts"),
    ("twice.txt", "cats\ndogs\ncats\n", "lists the concept 'cats' twice (entries 1 and 3): each concept gets one id"),
    ("links.txt", "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7\n", "lists links, whose"),
    ("list.yaml", "- cats\n", "is not a concept list axjax reads: use .txt"),
    ("bad.csv", "only a description\n", "row 1 is not description,reference"),
    ("bad.json", "{\"modelId\": 1}", "is not a Neuronpedia export: it should be a list"),
])
def test_bad_lists_are_refused_in_one_sentence(tmp_path, name, text, message):
  (tmp_path / name).write_text(text)
  with pytest.raises(AxjaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
    read_concept_list(str(tmp_path / name))


def test_a_missing_list_is_named(tmp_path):
  with pytest.raises(AxjaxError, match="there is no concept list at"):
    read_concept_list(str(tmp_path / "absent.txt"))
