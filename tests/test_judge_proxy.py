"""The offline proxy judge: orderings it must get right, its output contract, and its stored calibration."""

import json

import numpy as np
import pytest

from axjax.errors import AxjaxError
from axjax.judges import calibrate_proxy, proxy
from axjax.judges.base import RatingRequest
from axjax.judges.proxy import ProxyJudge, distinct_trigram_ratio, load_thresholds

FLUENT_PPL = 12.0


def judge(ppl=FLUENT_PPL):
  return ProxyJudge(lambda reqs: np.full(len(reqs), ppl))


def rate_one(concept, instruction, generation, ppl=FLUENT_PPL):
  return judge(ppl).rate([RatingRequest(concept, instruction, generation)])[0]


PAIRS = [  # (concept, on-concept text, off-concept text)
    ("terms related to online gambling and casinos",
     "The casino offers poker, blackjack and roulette tables, and players can bet on slots online for a jackpot.",
     "Preheat the oven, whisk the eggs with sugar and fold in the flour before baking the cake for thirty minutes."),
    ("references to nighttime or nocturnal themes",
     "At midnight the moon rose over the dark town while owls called and the stars shone through the night.",
     "Quarterly revenue grew by eight percent, driven by strong sales of office software to small businesses."),
    ("terms related to electrical charge and currents",
     "Current flows from the positive terminal; the voltage across the resistor pushes electrons and charges "
     "the capacitor.",
     "The hikers followed the river trail through the pine forest and reached the lake before lunch."),
]


@pytest.mark.parametrize("concept,on,off", PAIRS)
def test_on_concept_text_rates_higher_on_concept(concept, on, off):
  instruction = "Tell me about your weekend."
  on_rating, off_rating = rate_one(concept, instruction, on), rate_one(concept, instruction, off)
  assert on_rating[0] == 2 and off_rating[0] == 0
  sig = proxy.signals(proxy.shared_embedder(), [RatingRequest(concept, instruction, t) for t in (on, off)],
                      np.full(2, FLUENT_PPL))
  assert sig[0, 0] > sig[1, 0] + 0.2


def test_instruction_relevance_ordering():
  instruction = "What type of soil is suitable for cactus?"
  answer = "Cacti need a gritty, fast-draining soil: mix potting soil with coarse sand and perlite, and use a pot " \
           "with a drainage hole."
  loose = "Many desert plants grow slowly and store water in their thick stems during long dry seasons."
  unrelated = "The stock exchange closed early on Friday after a technical fault in its trading software."
  r = judge().rate([RatingRequest("references to nighttime", instruction, g) for g in (answer, loose, unrelated)])
  assert r[0, 1] == 2 and r[2, 1] == 0
  assert r[0, 1] >= r[1, 1] >= r[2, 1]


def test_repetitive_text_gets_fluency_zero_despite_low_perplexity():
  loop = "The night is dark and the stars are bright. " * 8
  tokens = "casino " * 30
  fluent = "The night was dark, but the stars were bright enough to guide us home along the old road."
  r = judge(ppl=1.8).rate([RatingRequest("nighttime", "Describe the sky.", g) for g in (loop, tokens, fluent)])
  assert r[0, 2] == 0 and r[1, 2] == 0 and r[2, 2] == 2
  assert r[1, 0] <= 1  # a concept word repeated is at most "awkwardly" present
  salad = "moon the owl of darkness sky the, stars midnight lantern the quickly"
  assert rate_one("nighttime", "Describe the sky.", salad, ppl=3000.0)[2] == 0


def test_output_contract():
  reqs = [RatingRequest("references to Google", "Who is Larry Page?", g)
          for g in ("Larry Page co-founded Google with Sergey Brin.", "", "  \n ", "= = =", "ok")]
  seen = []
  j = ProxyJudge(lambda rs: np.array([FLUENT_PPL] * len(rs)), chunk=2)
  out = j.rate(reqs, progress=lambda done, total: seen.append((done, total)))
  assert out.dtype == np.int8 and out.shape == (5, 3)
  assert set(np.unique(out)) <= {0, 1, 2}
  np.testing.assert_array_equal(out[1:4], 0)  # no words: nothing to rate
  assert seen == [(2, 5), (4, 5), (5, 5)]
  assert j.usage() == {"rated": 5}
  assert j.rate([]).shape == (0, 3)
  assert j.is_proxy and j.name.startswith("proxy:wordllama")
  j.check()


def test_nan_perplexity_rates_fluency_zero():
  r = ProxyJudge(lambda rs: np.full(len(rs), np.nan)).rate([RatingRequest("c", "i", "A fine sentence here.")])
  assert r[0, 2] == 0


def test_distinct_trigram_ratio():
  assert distinct_trigram_ratio("a b") == 1.0
  assert distinct_trigram_ratio("one two three four") == 1.0
  assert distinct_trigram_ratio("go go go go go go") == pytest.approx(1 / 4)


def test_missing_embedding_package_is_one_sentence(monkeypatch):
  proxy.shared_embedder.cache_clear()
  monkeypatch.setattr(proxy.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(AxjaxError, match="needs the package wordllama"):
    judge().check()
  proxy.shared_embedder.cache_clear()


def test_bad_thresholds_file(tmp_path):
  path = tmp_path / "t.json"
  path.write_text(json.dumps({"thresholds": {}}))
  with pytest.raises(AxjaxError, match="cannot read proxy-judge thresholds"):
    load_thresholds(str(path))


@pytest.fixture(scope="module")
def calibration():
  items, requests, labels = calibrate_proxy.read_calibration()
  sig = proxy.signals(proxy.shared_embedder(), requests, calibrate_proxy.stored_perplexity(items))
  with open(proxy.THRESHOLDS_FILE) as f:
    return items, labels, sig, json.load(f)


def test_calibration_set_is_labelled_and_has_perplexities(calibration):
  items, labels, _, _ = calibration
  assert 80 <= len(items) <= 120
  assert set(np.unique(labels)) == {0, 1, 2}
  assert all(("perplexity" in it) for it in items)
  assert sum(it["perplexity"] is None for it in items) == sum(not it["generation"] for it in items)


def test_stored_heldout_agreement_is_above_chance_and_reproduces(calibration):
  _, labels, sig, stored = calibration
  heldout = stored["calibration"]["heldout"]
  for aspect in ("concept", "instruction", "fluency"):
    assert heldout[aspect]["quadratic_kappa"] > 0.5
    assert heldout[aspect]["accuracy"] > heldout[aspect]["majority_label_accuracy"] + 0.2
  assert calibrate_proxy.evaluate(load_thresholds(), sig, labels) == {k: stored["calibration"][k]
                                                                       for k in ("fit", "heldout")}


def test_fit_reproduces_the_shipped_thresholds(calibration):
  _, labels, sig, stored = calibration
  fit = calibrate_proxy.fit_half(len(labels))
  refit = calibrate_proxy.fit_thresholds(sig[fit], labels[fit])
  shipped = load_thresholds()
  # A cut is a midpoint between two embedding similarities, computed in float32 by WordLlama: their last bits
  # depend on the CPU's SIMD path, so the cuts are compared to 1e-6 and the ratings they give exactly.
  for aspect in ("concept", "instruction", "neg_log_perplexity", "distinct_trigrams"):
    got, want = getattr(refit, aspect), getattr(shipped, aspect)
    np.testing.assert_allclose([got.lo, got.hi], [want.lo, want.hi], rtol=1e-6, err_msg=aspect)
  assert refit.cap_degenerate_concept == shipped.cap_degenerate_concept
  np.testing.assert_array_equal(proxy.ratings(sig, refit), proxy.ratings(sig, shipped))
  assert refit.to_json()["thresholds"].keys() == stored["thresholds"].keys()
