"""BM25 over units (bm25s) and reciprocal rank fusion: ranking, filters, scripts, bad input."""

from __future__ import annotations

import pytest

from longrag.retrieval.bm25 import BM25Index, tokenize
from longrag.retrieval.fusion import reciprocal_rank_fusion

TEXTS = [
    "Marie Curie was born in Warsaw in 1867.",
    "She moved to Paris to study physics.",
    "The Amazon river flows through Brazil.",
    "Rivers carry water to the sea.",
    "",
]
IDS = [10, 11, 12, 13, 14]


def test_tokenize_words_stopwords_plurals_and_scripts():
    assert tokenize("The rivers of Brazil") == ["river", "brazil"]
    assert tokenize("Cities!") == ["city"]
    zh = tokenize("北京大学")
    assert {"北", "京", "北京", "大学"} <= set(zh)
    assert tokenize("مرحبا بالعالم") == ["مرحبا", "بالعالم"]
    assert tokenize("") == [] and tokenize("the of and") == []


def test_ranks_the_matching_unit_first_and_returns_ids():
    index = BM25Index(IDS, TEXTS)
    assert len(index) == 5
    hits = index.search("Where was Marie Curie born?", k=3)
    assert hits[0].id == 10 and hits[0].score > 0
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    rivers = [h.id for h in index.search("river water", k=5)]
    assert set(rivers) == {12, 13} and rivers[0] == 13  # both terms beat one term


def test_allowed_ids_filter_and_no_match():
    index = BM25Index(IDS, TEXTS)
    assert [h.id for h in index.search("Marie Curie river", k=5, allowed_ids=[12, 13])] in ([12, 13], [13, 12])
    assert index.search("zyxwv", k=5) == []
    assert index.search("the of", k=5) == []  # only stop words: nothing to match
    assert index.search("Curie", k=5, allowed_ids=[999]) == []


def test_empty_index_and_bad_input():
    empty = BM25Index([], [])
    assert empty.search("anything", k=3) == [] and len(empty) == 0
    with pytest.raises(ValueError):
        BM25Index([1, 2], ["one"])
    only_empty = BM25Index([1], [""])
    assert only_empty.search("word", k=1) == []


def test_cjk_and_arabic_documents():
    index = BM25Index(
        [1, 2, 3],
        ["北京是中国的首都。", "القاهرة هي عاصمة مصر.", "Tokyo is the capital of Japan."],
    )
    assert index.search("首都", k=1)[0].id == 1
    assert index.search("عاصمة", k=1)[0].id == 2
    assert index.search("capital Japan", k=1)[0].id == 3


def test_long_unit_does_not_crash():
    index = BM25Index([1, 2], ["alpha " * 50_000, "beta gamma"])
    assert index.search("gamma", k=2)[0].id == 2


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    ids = [i for i, _ in fused]
    assert ids[0] == 1  # ranks 1 and 2 beat ranks 3 and 1
    assert set(ids) == {1, 2, 3, 4}
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert reciprocal_rank_fusion([[5, 5, 6]])[0] == (5, pytest.approx(1 / 61))  # duplicates count once
    assert reciprocal_rank_fusion([]) == [] and reciprocal_rank_fusion([[], []]) == []
    weighted = reciprocal_rank_fusion([[1], [2]], weights=[1.0, 2.0])
    assert weighted[0][0] == 2
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1]], weights=[1.0, 2.0])
