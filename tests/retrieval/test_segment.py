from longrag.retrieval.chunking import sentence_chunks
from longrag.retrieval.segment import BACKENDS, split_sentences


def _check_exact(text, sents):
    for s in sents:
        piece = text[s.start : s.end]
        assert piece == piece.strip() and piece
    # every non-space character is covered by exactly one sentence, in order
    covered = "".join(text[s.start : s.end] for s in sents)
    assert "".join(covered.split()) == "".join(text.split())
    assert all(a.end <= b.start for a, b in zip(sents, sents[1:]))


def test_sentences_have_exact_offsets():
    text = "  Mr. Smith went to Washington. He arrived at 5 p.m.! Did he?\n\nNew paragraph here"
    sents = split_sentences(text)
    _check_exact(text, sents)
    assert text[sents[0].start : sents[0].end].startswith("Mr. Smith")
    assert text[sents[-1].start : sents[-1].end] == "New paragraph here"
    assert len(sents) >= 3


def test_non_latin_scripts_and_offsets():
    text = "東京は日本の首都です。大阪は大きい都市です。 مرحبا بالعالم. هذه جملة ثانية."
    sents = split_sentences(text)
    _check_exact(text, sents)
    assert len(sents) >= 2


def test_no_punctuation_and_enormous_sentences_are_split():
    text = " ".join(["word"] * 3000)
    sents = split_sentences(text, max_chars=500)
    _check_exact(text, sents)
    assert all(s.end - s.start <= 500 for s in sents)
    hard = "x" * 1234
    sents = split_sentences(hard, max_chars=500)
    assert [s.end - s.start for s in sents] == [500, 500, 234]


def test_all_backends_agree_on_exactness():
    text = "First sentence here. Second one follows! A third? Yes.\nA wrapped\nline continues."
    for name in BACKENDS:
        _check_exact(text, split_sentences(text, backend=name))


def test_whitespace_only_gives_no_sentences():
    assert split_sentences(" \n\n \t ") == []


def test_chunks_are_whole_sentences_under_target():
    text = "A a a. B b b b. C c. D d d d d d. E."
    sents = split_sentences(text)
    counts = [len(text[s.start:s.end].split()) for s in sents]
    chunks = sentence_chunks(sents, counts, target_tokens=5)
    assert chunks[0].first_sentence == 0
    assert chunks[-1].last_sentence == len(sents) - 1
    for c, nxt in zip(chunks, chunks[1:]):
        assert nxt.first_sentence == c.last_sentence + 1
    for c in chunks:
        n = sum(counts[c.first_sentence : c.last_sentence + 1])
        assert n <= 5 or c.first_sentence == c.last_sentence
        assert c.start == sents[c.first_sentence].start and c.end == sents[c.last_sentence].end


def test_chunks_never_cross_a_page_or_heading_and_a_heading_leads_its_section():
    from longrag.retrieval.chunking import chunk_starts
    from longrag.retrieval.parse import markdown_sections

    text = ("# Minutes\n\nThe board met at noon. Ann chaired it.\n\nThe budget passed. It was late.\n\n"
            "## Votes\n\nBob voted no. Cy voted yes.\nDee abstained.")
    sents = split_sentences(text)
    starts = chunk_starts(sents, [o for o, _ in markdown_sections(text)])
    chunks = sentence_chunks(sents, [1] * len(sents), target_tokens=100, starts=starts)
    assert [text[c.start:c.end] for c in chunks] == [
        "# Minutes\n\nThe board met at noon. Ann chaired it.\n\nThe budget passed. It was late.",
        "## Votes\n\nBob voted no. Cy voted yes.\nDee abstained.",  # the heading leads the section under it
    ]
    # a page start inside a paragraph ends the chunk there too
    page2 = text.index("It was late.")
    paged = sentence_chunks(sents, [1] * len(sents), target_tokens=100, starts=chunk_starts(sents, [page2]))
    assert [text[c.start:c.end] for c in paged][0].endswith("The budget passed.")
    assert sentence_chunks(sents, [1] * len(sents), target_tokens=100)[0].last_sentence == len(sents) - 1
