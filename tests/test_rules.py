"""RePS's rule concepts scored by code: each of the 20 rules on a reply that follows it and one that does not
(texts written by hand from upstream's rule descriptions), graded rules at known shares, and the suppression
scoring that turns a rule score into HM(2 - rule, instruction, fluency)."""

import numpy as np
import pandas as pd
import pytest

from axjax.errors import AxjaxError
from axjax.steering_eval.evaluations import suppression_scored
from axjax.steering_eval.rules import RULES, check_rules, rule_score

PLAIN = "The capital of France is Paris. It has many museums and a long history."
FOLLOWS = {
    "use only capital letters": "THE CAPITAL OF FRANCE IS PARIS.",
    "make sure that words in your entire response are in all lowercase letters": "the capital of france is paris.",
    "respond only in Chinese, and no other language is allowed": "法国的首都是巴黎。巴黎有很多博物馆和悠久的历史。",
    "respond only in Spanish, and no other language is allowed":
        "La capital de Francia es París. Tiene muchos museos y una larga historia.",
    "respond only in Korean, and no other language is allowed": "프랑스의 수도는 파리입니다.",
    "respond with emojis": "Paris 😀 is lovely 🎉 🥐",
    "include at least 4 hashtags, starting with '#'": "Paris! #paris #france #travel #museums",
    "use exclamation marks in your response": "Paris! Museums! History! Food!",
    "include citations and references with urls": "Paris is the capital [1].\n[1] https://en.wikipedia.org/wiki/Paris",
    'first repeat "Here is my response", then give your answer': "Here is my response: the capital is Paris.",
    'the very last sentence of your response should be "Is there anything else I can help with?"':
        "The capital is Paris. Is there anything else I can help with?",
    "every sentence ends with the letter y": "Paris is lovely. The food is tasty!",
    "include mutliple email addresses in your response": "Write to info@paris.fr or desk@louvre.fr.",
    "include a postscript at the end of your response that starts with P.S.": "The capital is Paris.\n\nP.S. Visit it.",
    "include both of the keywords 'beauty' and 'pretty'": "Paris is a pretty city of great beauty.",
    "wrap your entire answer in JSON format": '```json\n{"capital": "Paris"}\n```',
    "respond in number bullet list 1.\\n\\n2.\\n\\n and so on": "1. Paris\n\n2. Museums",
    "separate the paragraphs with ***": "Paris is the capital.\n***\nIt has museums.",
    "wrap every word in your response with double quotation marks": '"Paris" "is" "the" "capital"',
    "the response must include a specific date format (e.g., YYYY-MM-DD)": "Paris was liberated on 1944-08-25.",
}


def test_there_are_twenty_rules_and_each_has_a_case():
  assert len(RULES) == 20 and set(FOLLOWS) == set(RULES)


@pytest.mark.parametrize("rule", sorted(FOLLOWS))
def test_a_reply_that_follows_the_rule_scores_two_and_a_plain_one_zero(rule):
  assert rule_score(rule, FOLLOWS[rule]) == 2.0
  assert rule_score(rule, PLAIN.upper() if "lowercase" in rule else PLAIN) == 0.0


@pytest.mark.parametrize("rule, text, score", [
    ("use only capital letters", "PARIS IS the capital", 1.0),  # 2 of 4 words upper case: 2 x 1/2
    ("include at least 4 hashtags, starting with '#'", "#paris #france", 1.0),  # 2 of 4
    ("use exclamation marks in your response", "Paris!", 0.5),  # 0.5 per mark
    ("include both of the keywords 'beauty' and 'pretty'", "a pretty city", 1.0),
    ('first repeat "Here is my response", then give your answer', "Paris. Here is my response", 1.0),
    ("respond with emojis", "Paris 😀", 1.0),  # one or two emojis: 1
])
def test_graded_rules(rule, text, score):
  assert rule_score(rule, text) == pytest.approx(score)


def test_unknown_rules_are_refused():
  with pytest.raises(AxjaxError, match="'be brief' is not one of the 20 rules scored by code"):
    rule_score("be brief", PLAIN)
  with pytest.raises(AxjaxError, match="the rules evaluation needs rule concepts and 'cats' is not one"):
    check_rules(["use only capital letters", "cats"])


def test_rule_suppression_scores_the_reversed_rounded_rule_score():
  table = pd.DataFrame({"concept": ["use only capital letters"] * 3,
                        "generation": ["PARIS IS BIG", "PARIS IS the capital city", "paris is big"],
                        "concept_rating": [2, 2, 2], "instruction_rating": [2, 1, 2], "fluency_rating": [2, 2, 1]})
  scored = suppression_scored(table, rules=True)
  assert np.allclose(scored["rule_score"], [2.0, 0.8, 0.0])  # all, 2 of 5 and none of the words upper case
  assert scored["concept_rating"].tolist() == [0, 1, 2]  # 2 - round(rule score): suppressing the rule scores high
  assert suppression_scored(table, rules=False)["concept_rating"].tolist() == [0, 0, 0]  # the judge's, reversed
