"""Drafters: who proposes the tokens the target verifies.

* :class:`LMDrafter`: an LLM over the retrieved context (the paper's drafter), with its own cache.
* :class:`NgramDrafter`: prompt lookup, copying what followed the latest n-gram in a reference
  (the retrieved context, then the target's whole context); free and deterministic.
* :class:`HybridDrafter`: the n-gram lookup first, the LLM when nothing usable matches.

The n-gram and hybrid drafters cut their drafts to a cost-aware length (:mod:`.draft_length`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from longrag.generation.rapid.draft_length import DraftLength
from longrag.generation.rapid.kvstate import KVState


@dataclass
class Draft:
    """Proposed tokens and, per token, the drafter's distribution ``q`` over the vocabulary.

    ``probs`` is ``None`` for a deterministic proposal (``q`` = one-hot on the token).
    """

    tokens: list[int]
    probs: torch.Tensor | None
    source: str = "llm"


class Drafter(Protocol):
    """What the speculative loop calls on a drafter: a proposal each round, then its outcome."""

    def propose(self, generated: Sequence[int], gamma: int, *, temperature: float,
                generator: torch.Generator | None) -> Draft:
        """Up to ``gamma`` tokens to follow ``generated`` (an empty draft: a plain target step)."""
        ...

    def observe(self, draft: Draft, accepted: int, seconds: float, *, verify_seconds: float | None = None) -> None:
        """The round's outcome: ``accepted`` of ``draft``'s tokens were accepted; the round took
        ``seconds`` (drafting + verification), ``verify_seconds`` of them verifying."""
        ...


class LMDrafter:
    """An LLM drafter over its own (short) prompt with its own KV cache.

    Args:
        model: a causal LM sharing the target's tokenizer (may be the target's own weights).
        prompt_ids: the drafter's prompt (the retrieved context plus the question).
        min_confidence: stop drafting once the next token's drafter probability falls under it
            (always at least one token).
        state: an optional pre-filled :class:`KVState` to reuse.
    """

    def __init__(self, model: Any, prompt_ids: Sequence[int], *, min_confidence: float = 0.3,
                 state: KVState | None = None) -> None:
        if not prompt_ids:
            raise ValueError("the drafter prompt is empty")
        self.prompt = list(prompt_ids)
        self.min_confidence = min_confidence
        self.state = state or KVState(model)
        self.steps = 0
        self.seconds = 0.0

    def propose(self, generated: Sequence[int], gamma: int, *, temperature: float,
                generator: torch.Generator | None) -> Draft:
        t0 = time.perf_counter()
        seq = self.prompt + list(generated)
        logits = self.state.advance(seq)[-1]
        self.steps += 1
        tokens: list[int] = []
        dists: list[torch.Tensor] = []
        while True:
            q = torch.softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
            if temperature > 0:
                tok = int(torch.multinomial(q, 1, generator=generator).item())
            else:
                tok = int(torch.argmax(logits).item())
            if tokens and float(q[tok]) < self.min_confidence:
                break
            tokens.append(tok)
            dists.append(q)
            if len(tokens) >= gamma:
                break
            logits = self.state.feed([tok])[-1]
            self.steps += 1
        self.seconds += time.perf_counter() - t0
        return Draft(tokens, torch.stack(dists), "llm")

    def observe(self, draft: Draft, accepted: int, seconds: float, *, verify_seconds: float | None = None) -> None:
        """Nothing to learn: the draft length is set by ``gamma`` and the confidence stop."""


class NgramDrafter:
    """Prompt-lookup drafting: copy what followed the latest n-gram in a reference text.

    Looks for the last ``n`` generated tokens (``max_ngram`` down to ``min_ngram``) in
    ``reference_ids`` (the retrieved context) and proposes the tokens that followed the most
    recent match; when nothing matches there, in ``fallback_ids`` (e.g. the target's whole
    context). Deterministic: ``q`` is one-hot. The n-grams are indexed once (a dict per size).

    With ``min_agreement`` a match is drafted from only when at least that fraction of the
    n-gram's occurrences are followed by the same token as the most recent one (an n-gram such
    as "of the" continues differently all over a document; such matches were rarely accepted in
    bench/rapid.py). With ``length`` (a :class:`DraftLength`) the draft is cut to the cost-aware
    length (possibly 0: no draft), else it is as long as the match allows, up to ``gamma``.
    """

    def __init__(self, reference_ids: Sequence[int], *, max_ngram: int = 3, min_ngram: int = 1,
                 fallback_ids: Sequence[int] = (), min_agreement: float = 0.0,
                 length: DraftLength | None = None) -> None:
        if min_ngram < 1 or max_ngram < min_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        if not 0 <= min_agreement <= 1:
            raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
        self.refs = [list(r) for r in (reference_ids, fallback_ids) if len(r)]
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.min_agreement = min_agreement
        self.length = length
        # per reference and n: n-gram -> (start of its most recent occurrence that has a continuation,
        # share of its occurrences continued by the same token as that one)
        self._index = [{n: self._ngrams(r, n) for n in range(min_ngram, max_ngram + 1)} for r in self.refs]
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _ngrams(ref: list[int], n: int) -> dict[tuple[int, ...], tuple[int, float]]:
        nexts: dict[tuple[int, ...], list[int]] = {}
        last: dict[tuple[int, ...], int] = {}
        for s in range(len(ref) - n):
            key = tuple(ref[s : s + n])
            nexts.setdefault(key, []).append(ref[s + n])
            last[key] = s
        return {key: (s, nexts[key].count(nexts[key][-1]) / len(nexts[key])) for key, s in last.items()}

    def lookup(self, history: Sequence[int], gamma: int) -> list[int]:
        hist = list(history)
        for ref, index in zip(self.refs, self._index):
            for n in range(min(self.max_ngram, len(hist)), self.min_ngram - 1, -1):
                hit = index[n].get(tuple(hist[-n:]))
                if hit is not None:
                    s, agreement = hit
                    return ref[s + n : s + n + gamma] if agreement >= self.min_agreement else []
        return []

    def propose(self, generated: Sequence[int], gamma: int, *, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Draft:
        k = self.length.best(gamma) if self.length is not None else gamma
        if k == 0 and self.length is not None:
            self.length.observe_draft(0, 0)  # skipped: the estimate drifts back toward its prior
        toks = self.lookup(generated, k) if generated and k > 0 else []
        if toks:
            self.hits += 1
        else:
            self.misses += 1
        return Draft(toks, None, "ngram")

    def observe(self, draft: Draft, accepted: int, seconds: float, *, verify_seconds: float | None = None) -> None:
        """A round's outcome (see :func:`rapid_generate`): feeds the cost-aware ``length``."""
        if self.length is not None:
            self.length.observe_round(draft, accepted, kind="ngram",
                                      verify_seconds=seconds if verify_seconds is None else verify_seconds)


class HybridDrafter:
    """Exact n-gram lookup first; the LLM drafter when nothing (usable) matches: no match, an
    ambiguous one, or a cost-aware length of 0 (see :class:`NgramDrafter`).

    With ``llm_length`` (a :class:`DraftLength` with the LLM's drafting cost) an LLM draft is cut
    to its cost-aware length, and a length of 0 makes the round a plain target step: an LLM
    drafter whose acceptance does not pay for its steps and the longer verification is not used.
    """

    def __init__(self, ngram: NgramDrafter, llm: LMDrafter, *, llm_length: DraftLength | None = None) -> None:
        self.ngram = ngram
        self.llm = llm
        self.llm_length = llm_length

    def observe(self, draft: Draft, accepted: int, seconds: float, *, verify_seconds: float | None = None) -> None:
        """A round's outcome: ``accepted`` draft tokens (+1 token from the target) in ``seconds``
        (``verify_seconds`` of them verifying); fed to the n-gram drafter's and the LLM's
        cost-aware lengths (every round's verification, each kind's own acceptance)."""
        self.ngram.observe(draft, accepted, seconds, verify_seconds=verify_seconds)
        if self.llm_length is not None:
            verifying = seconds if verify_seconds is None else verify_seconds
            self.llm_length.observe_round(draft, accepted, kind="llm", verify_seconds=verifying,
                                          drafting_seconds=max(0.0, seconds - verifying))

    def propose(self, generated: Sequence[int], gamma: int, *, temperature: float,
                generator: torch.Generator | None) -> Draft:
        d = self.ngram.propose(generated, gamma)
        if d.tokens:
            return d
        return self.llm_draft(generated, gamma, temperature=temperature, generator=generator)

    def llm_draft(self, generated: Sequence[int], gamma: int, *, temperature: float,
                  generator: torch.Generator | None) -> Draft:
        """The LLM drafter's proposal, cut to ``llm_length``'s cost-aware length (0: a plain target step)."""
        if self.llm_length is not None:
            gamma = self.llm_length.best(gamma)
            if gamma == 0:
                self.llm_length.observe_draft(0, 0)
                return Draft([], None, "none")  # a plain target step
        return self.llm.propose(generated, gamma, temperature=temperature, generator=generator)
