"""The position index of constrained decoding: a token trie over the starts of the sentences.

Each sentence the model can see enters the trie twice, tokenised as it stands and with a leading
space (a reply may start either way). A node knows every sentence whose start passes through it,
so decoding inside the trie stops as soon as the prefix names one sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class TrieNode:
    """One token position: its children by token id and the sentences that pass through it."""

    __slots__ = ("children", "sentences", "terminal")

    def __init__(self) -> None:
        self.children: dict[int, TrieNode] = {}
        self.sentences: set[int] = set()
        self.terminal: set[int] = set()  # sentences whose indexed tokens end here


@dataclass(frozen=True, slots=True)
class Variant:
    """One tokenisation of a sentence as the start of the evidence."""

    sentence: int  # position in the prompt's sentence list
    prefix: str  # "" or " " (leading-space variant)
    ids: tuple[int, ...]


class SentenceTrie:
    """Token trie over the starts of sentences; each node knows which sentences pass through it."""

    def __init__(self, variants: Sequence[Variant], *, depth: int = 64) -> None:
        self.root = TrieNode()
        self.variants: dict[tuple[int, ...], list[Variant]] = {}
        for v in variants:
            ids = v.ids[:depth]
            if not ids:
                continue
            node = self.root
            node.sentences.add(v.sentence)
            for t in ids:
                node = node.children.setdefault(t, TrieNode())
                node.sentences.add(v.sentence)
            node.terminal.add(v.sentence)
            self.variants.setdefault(ids, []).append(v)

    def allowed(self, node: TrieNode) -> list[int]:
        """The token ids that continue some sentence from ``node``."""
        return list(node.children)

    @staticmethod
    def unique(node: TrieNode) -> int | None:
        """The one sentence this node identifies, else None."""
        return next(iter(node.sentences)) if len(node.sentences) == 1 else None

    def walk(self, ids: Sequence[int]) -> TrieNode | None:
        """The node reached by ``ids`` from the root (None when no sentence starts so)."""
        node = self.root
        for t in ids:
            child = node.children.get(t)
            if child is None:
                return None
            node = child
        return node


def sentence_variants(tokenizer: Any, texts: Sequence[str], *, max_chars: int = 400) -> list[Variant]:
    """Plain and leading-space tokenisations of each text's start (batched)."""
    heads = [t[:max_chars] for t in texts]
    out: list[Variant] = []
    if not heads:
        return out
    for prefix in ("", " "):
        enc = tokenizer([prefix + h for h in heads], add_special_tokens=False)["input_ids"]
        for i, (h, ids) in enumerate(zip(heads, enc)):
            if len(h) == max_chars and len(ids) > 1:
                ids = ids[:-1]  # the cut may have split the last token
            out.append(Variant(i, prefix, tuple(ids)))
    return out
