"""Title links: which documents a text names, and the hop that places their openings."""

from __future__ import annotations

import pytest

from longrag.retrieval.links import TitleLinks, link_hop, link_name


def test_link_name_drops_disambiguation_extension_and_too_short_names():
    assert link_name("Kiss and Tell (1945 film)") == ("Kiss", "and", "Tell")
    assert link_name("Super_Bowl_50.txt") == ("Super", "Bowl", "50")
    assert link_name("Ed") == () and link_name("") == () and link_name(None) == ()
    assert link_name("東京") == ("東", "京")  # CJK: one word per character, two characters suffice


def test_named_in_matches_whole_words_case_sensitively_longest_first():
    links = TitleLinks([("st", "Shirley Temple"), ("ny", "New York"), ("nyt", "New York Times"),
                        ("tok", "東京"), ("temple", "Temple"), ("art", "Art")])
    text = "She read the New York Times, met Shirley Temple in 東京都, then flew to New York. Artists, art."
    assert links.named_in(text) == ["nyt", "st", "tok", "ny"]
    # "Temple" is inside the longer name; "Artists" is another word; "art" has another case
    assert links.named_in("nothing here") == []


def test_documents_sharing_a_name_are_all_linked():
    links = TitleLinks([(1, "Mercury (planet)"), (2, "Mercury (element)"), (3, "Venus")])
    assert links.named_in("Mercury is small.") == [1, 2]
    assert len(TitleLinks([])) == 0 and TitleLinks([]).named_in("Mercury") == []


def _hop(ranked, texts, docs, leads, titles, **kw):
    return link_hop(ranked, text_of=texts.__getitem__, doc_of=docs.__getitem__, lead_of=leads.get,
                    links=TitleLinks(titles.items()), **kw)


def test_link_hop_places_linked_openings_after_the_kept_head():
    # units 0-3 of doc A (0 names doc B), unit 10 opens doc B, unit 20 opens doc C
    texts = {0: "Corliss Archer was played by Shirley Temple.", 1: "x", 2: "y", 3: "z", 10: "Shirley Temple Black was",
             20: "Other", 11: "more"}
    docs = {0: "A", 1: "A", 2: "A", 3: "A", 10: "B", 11: "B", 20: "C"}
    leads = {"A": 0, "B": 10, "C": 20}
    titles = {"A": "Kiss and Tell (1945 film)", "B": "Shirley Temple", "C": "Archer"}
    ranked = [0, 1, 2, 3, 11, 10]
    assert _hop(ranked, texts, docs, leads, titles, read=1, keep=2) == [0, 1, 20, 10, 2, 3, 11]
    assert _hop(ranked, texts, docs, leads, titles, read=1, keep=0) == [20, 10, 0, 1, 2, 3, 11]
    assert _hop(ranked, texts, docs, leads, titles, read=0, keep=2) == ranked
    # a lead already kept in the head is not repeated; a lead that may not be returned is skipped
    assert _hop([10, 0, 1], texts, docs, leads, titles, read=2, keep=1) == [10, 20, 0, 1]
    assert _hop(ranked, texts, docs, {"A": 0, "B": 10}, titles, read=1, keep=2) == [0, 1, 10, 2, 3, 11]
    # a unit naming its own document links nothing
    assert _hop([10], texts, docs, leads, titles, read=1, keep=0) == [10]
    with pytest.raises(ValueError):
        _hop(ranked, texts, docs, leads, titles, read=-1)
