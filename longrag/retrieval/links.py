"""Title links: a second retrieval hop along the documents a retrieved unit names.

Multi-hop questions ("What position did the woman who played Corliss Archer hold?") are answered
by a unit the question does not describe: the first hop finds "... Corliss Archer was played by
Shirley Temple", and the answer sits in the opening of the *Shirley Temple* document, which
shares no words with the question. When a top-ranked unit names another document of the corpus
by its title, that document's opening unit is the natural context for the name (as a hyperlink
would be), so :func:`link_hop` places it right after the best units (docs/situated.md).

Titles are matched as whole word sequences (case-sensitive; CJK characters as single words, since
those scripts do not space words; a trailing parenthetical such as "(1945 film)" and a file
extension dropped), through a dictionary of word n-grams: the cost per unit is its length times
the longest title, whatever the size of the corpus.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Sequence

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+")  # words; each CJK character on its own
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_PAREN = re.compile(r"\s*\([^()]*\)\s*$")
_EXT = re.compile(r"\.(txt|md|markdown|pdf|html?|docx?|pptx|epub|rst|csv|json)$", re.IGNORECASE)


def link_name(title: str | None) -> tuple[str, ...]:
    """The word sequence a document's title is recognised by in other text (empty: none).

    A trailing parenthetical ("Kiss and Tell (1945 film)") and a file extension are dropped and
    underscores read as spaces; a name shorter than three characters (a CJK character counting
    as two: it is often a word) is not linked.
    """
    if not title:
        return ()
    name = _PAREN.sub("", _EXT.sub("", title.strip()).replace("_", " ")).strip()
    words = tuple(_WORD.findall(name))
    size = sum(2 if _CJK_CHAR.match(w) else len(w) for w in words)
    return words if size >= 3 else ()


class TitleLinks:
    """Which documents a text names by title."""

    def __init__(self, titles: Iterable[tuple[Hashable, str | None]], *, max_words: int = 12) -> None:
        """Args:
            titles: ``(document key, title)`` pairs; documents sharing a name are all linked.
            max_words: longer names are not linked (bounds the lookup per word).
        """
        self._names: dict[tuple[str, ...], list[Hashable]] = {}
        for key, title in titles:
            name = link_name(title)
            if name and len(name) <= max_words:
                self._names.setdefault(name, []).append(key)
        self._longest = max((len(n) for n in self._names), default=0)

    def __len__(self) -> int:
        return len(self._names)

    def named_in(self, text: str) -> list[Hashable]:
        """Documents whose name occurs in ``text``, in order of first mention; a longer name wins
        over one nested in it ("New York Times" over "New York")."""
        words = _WORD.findall(text)
        found: list[Hashable] = []
        i = 0
        while i < len(words):
            for n in range(min(self._longest, len(words) - i), 0, -1):
                keys = self._names.get(tuple(words[i : i + n]))
                if keys:
                    found.extend(k for k in keys if k not in found)
                    i += n
                    break
            else:
                i += 1
        return found


def link_hop(
    ranked: Sequence[int],
    *,
    text_of: Callable[[int], str],
    doc_of: Callable[[int], Hashable],
    lead_of: Callable[[Hashable], int | None],
    links: TitleLinks,
    read: int = 5,
    keep: int = 2,
) -> list[int]:
    """Re-rank ``ranked`` (unit ids, best first) with one hop along title links.

    The first ``read`` units are read for names of other documents; the opening unit of each
    named document (``lead_of``; None when it may not be returned, e.g. outside the searched
    documents) is placed right after the first ``keep`` units, in order of mention, and the rest
    follows without duplicates. ``read=0`` returns the ranking unchanged. The defaults are the
    product's (``LONGRAG_LINK_HOP`` / ``LONGRAG_LINK_KEEP``, picked by bench/links_dev.py).
    """
    if read < 0 or keep < 0:
        raise ValueError("read and keep must be >= 0")
    head = list(ranked[:keep])
    linked: list[int] = []
    for unit in ranked[:read]:
        own = doc_of(unit)
        for doc in links.named_in(text_of(unit)):
            lead = lead_of(doc) if doc != own else None
            if lead is not None and lead not in head and lead not in linked:
                linked.append(lead)
    taken = set(head) | set(linked)
    return head + linked + [u for u in ranked[keep:] if u not in taken]
