"""The benchmark metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from bench.metrics import (
    best_em_f1,
    dedupe,
    exact_match,
    exam_choice,
    exam_options,
    f1,
    first_hit_rank,
    hit_metrics,
    ndcg_at_k,
    normalize_answer,
    recall_at_k,
)


def test_normalisation_is_squads():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theory") == "theory"  # 'the' only as a whole word
    assert normalize_answer("") == ""


def test_exact_match_and_f1():
    assert exact_match("the Denver Broncos", "Denver Broncos.") == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    # pred {denver, broncos, won}, gold {denver, broncos}: P=2/3, R=1 -> F1=0.8
    assert f1("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    assert f1("Carolina", "Denver Broncos") == 0.0
    assert f1("", "Denver") == 0.0
    # repeated tokens count by multiplicity: pred [a1 a1], gold [a1]: P=1/2, R=1 -> 2/3
    assert f1("word word", "word") == pytest.approx(2 / 3)


def test_best_over_golds():
    em, f = best_em_f1("Santa Clara", ["Levi's Stadium", "Santa Clara, California", "Santa Clara"])
    assert em == 1.0 and f == 1.0
    em, f = best_em_f1("in Santa Clara", ["Santa Clara, California"])
    # pred {in, santa, clara}, gold {santa, clara, california}: P=R=2/3
    assert em == 0.0 and f == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        best_em_f1("x", [])


def test_hit_metrics():
    ranks = [1, 3, None, 7]
    m = hit_metrics(ranks, ks=(1, 5, 10))
    assert m["recall@1"] == 0.25
    assert m["recall@5"] == 0.5
    assert m["recall@10"] == 0.75
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 7) / 4)
    assert first_hit_rank([False, False, True, True]) == 3
    assert first_hit_rank([False]) is None
    with pytest.raises(ValueError):
        hit_metrics([])


def test_recall_at_k():
    rel = {"a": 1, "b": 2, "z": 0}
    assert recall_at_k(["x", "a", "y", "b"], rel, 2) == 0.5
    assert recall_at_k(["x", "a", "y", "b"], rel, 4) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(["a"], {"a": 0}, 1)


def test_ndcg_hand_computed():
    rel = {"d1": 3, "d2": 2, "d3": 1}
    # ranking d3, d1, x: DCG = 1/log2(2) + 3/log2(3); IDCG@3 = 3 + 2/log2(3) + 1/2
    got = ndcg_at_k(["d3", "d1", "x"], rel, 3)
    want = (1 + 3 / math.log2(3)) / (3 + 2 / math.log2(3) + 0.5)
    assert got == pytest.approx(want)
    assert ndcg_at_k(["d1", "d2", "d3"], rel, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], rel, 2) == 0.0
    # the ideal list is cut at k as well
    assert ndcg_at_k(["d1"], rel, 1) == pytest.approx(1.0)


def test_dedupe_keeps_first():
    assert dedupe(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]


QUALITY_Q = ("Why did people say the story was untrue?\n\n (A) They know he cheats\n (B) They were haters\n"
             " (C) He could not have gotten back home without being found out\n (D) It was published by the Times")
TPO_Q = ("why do beavers forage at night\nA. beavers are safe from predators at night\n"
         "B. foraging at night requires less energy\nC. beavers stay with their offspring\nD. less competition")


def test_exam_options_reads_both_letter_styles() -> None:
    assert exam_options(QUALITY_Q) == {"A": "They know he cheats", "B": "They were haters",
                                       "C": "He could not have gotten back home without being found out",
                                       "D": "It was published by the Times"}
    assert list(exam_options(TPO_Q)) == ["A", "B", "C", "D"]
    assert exam_options("Who wrote it?") == {}


@pytest.mark.parametrize("answer, choice", [
    ("B", "B"), ("(C)", "C"), ("C. He could not have gotten back", "C"), ("The answer is D.", "D"),
    ("Option A", "A"), ("(B) They were haters", "B"),
    ("He could not have gotten back home without being found out.", "C"),  # the option's text alone
    ("A story in the Times", None),  # the article "A", no option's whole text
    ("They were haters, and it was published by the Times", None),  # two options' texts: undecided
    ("", None), ("E", None),
])
def test_exam_choice_takes_the_first_standalone_letter_else_a_unique_option_text(answer: str, choice: str | None) -> None:
    assert exam_choice(answer, exam_options(QUALITY_Q)) == choice
