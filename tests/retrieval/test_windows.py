"""Sentence windows: exact offsets, best first, no window across a paragraph break."""

from __future__ import annotations

import numpy as np

from longrag.retrieval.segment import split_sentences
from longrag.retrieval.types import Hit
from longrag.retrieval.windows import WindowConfig, sentence_windows

TEXT = (
    "The rain fell on the moor all night. The shepherd stayed in his hut. "
    "In the morning the estate of Thornfield lay white with frost.\n\n"
    "Mr. Rowe owned the estate called Ashcombe Park. He bought it in 1802. His horses were grey.\n\n"
    "The village church had a crooked spire. Nobody knew who built it."
)
VOCAB = sorted({w.strip(".?").lower() for w in TEXT.split()} | {"what", "is", "name", "of", "rowe's", "called"})


def _encode(texts):
    """A bag-of-words encoder: enough to rank sentences by shared words."""
    out = np.zeros((len(texts), len(VOCAB)), np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().replace(".", " ").replace("?", " ").split():
            if w in VOCAB:
                out[i, VOCAB.index(w)] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _windows(question: str, config: WindowConfig):
    sents = split_sentences(TEXT)
    whole = [Hit("d", 0, len(TEXT), TEXT, 1.0)]
    return sents, sentence_windows(question, whole, sentences_of=lambda d: sents, text_of=lambda d: TEXT,
                                   encode=_encode, config=config)


def test_best_sentence_first_with_neighbours_and_exact_offsets():
    sents, wins = _windows("What is the name of the estate Mr. Rowe owned?", WindowConfig(top=1, radius=1))
    assert len(wins) == 1
    w = wins[0]
    assert TEXT[w.start : w.end] == w.text
    assert "Ashcombe Park" in w.text and "He bought it in 1802." in w.text


def test_windows_stop_at_paragraph_breaks():
    _, wins = _windows("Mr. Rowe owned the estate called Ashcombe Park", WindowConfig(top=1, radius=3))
    assert "\n\n" not in wins[0].text
    assert wins[0].text.startswith("Mr. Rowe") and wins[0].text.endswith("grey.")


def test_touching_windows_merge_and_every_window_is_exact():
    _, wins = _windows("Rowe estate horses bought", WindowConfig(top=3, radius=1))
    spans = sorted((w.start, w.end) for w in wins)
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert a1 < b0  # merged: no overlap
    for w in wins:
        assert TEXT[w.start : w.end] == w.text
    assert [w.score for w in wins] == sorted((w.score for w in wins), reverse=True)


def test_no_sentences_inside_hits_returns_the_hits():
    hit = Hit("d", 3, 5, TEXT[3:5], 1.0)
    out = sentence_windows("rain", [hit], sentences_of=lambda d: split_sentences(TEXT), text_of=lambda d: TEXT,
                           encode=_encode)
    assert out == [hit]


def test_a_chain_of_windows_merges_into_one():
    """Windows that each touch the next join even when the first two were far apart at first."""
    sents = split_sentences(TEXT)
    third = [s for s in sents if s.start < TEXT.index("\n\n")]  # the first paragraph's three sentences
    whole = [Hit("d", 0, len(TEXT), TEXT, 1.0)]
    wins = sentence_windows("rain moor night shepherd hut morning estate frost", whole,
                            sentences_of=lambda d: sents, text_of=lambda d: TEXT, encode=_encode,
                            config=WindowConfig(top=3, radius=0))
    first_par = [w for w in wins if w.start < TEXT.index("\n\n")]
    assert len(first_par) == 1 and (first_par[0].start, first_par[0].end) == (third[0].start, third[-1].end)


def test_a_sentence_is_ranked_with_its_heading_path():
    """"He bought it in 1802." shares no word with "Rowe"; under the heading "Mr. Rowe" it does."""
    text = "Mr. Rowe\n\nHe bought it in 1802.\n\nMr. Hale\n\nHe sold it in 1790."
    sents = split_sentences(text)
    whole = [Hit("d", 0, len(text), text, 1.0)]
    heads = {0: "Mr. Rowe", text.index("Mr. Hale"): "Mr. Hale"}

    def section_of(doc: str, offset: int) -> str:
        return heads[max(o for o in heads if o <= offset)]

    def best(**kw) -> str:
        return sentence_windows("When did Rowe buy it?", whole, sentences_of=lambda d: sents,
                                text_of=lambda d: text, encode=_encode, config=WindowConfig(top=1, radius=0), **kw)[0].text

    assert best(section_of=section_of) == "He bought it in 1802."
    hit = sentence_windows("When did Hale sell it?", whole, sentences_of=lambda d: sents, text_of=lambda d: text,
                           encode=_encode, config=WindowConfig(top=1, radius=0), section_of=section_of)[0]
    assert hit.text == "He sold it in 1790." and text[hit.start : hit.end] == hit.text  # offsets of the sentence itself
