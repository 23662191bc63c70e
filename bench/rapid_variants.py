"""RAPID drafter variants that bench/rapid.py measures next to the product's drafters.

* :class:`AdaptiveHybridDrafter` (``hybrid_plus`` in bench/rapid.py): the product's
  :class:`~longrag.generation.rapid.HybridDrafter`, but each round picks by measured speed among
  the arms available: an n-gram draft (when the lookup matched), an LLM draft, or a plain
  target step (an empty draft). An ablation, not a product option: on 24-token answers at 8k
  (SmolLM2, 4 questions, ``bench/results/rapid_8k_adaptive.json``) it decoded at 0.79x
  target-only, against 0.75x for the hybrid and 0.81x for the hybrid with 1-gram matches in the
  same run: the exploration rounds do not amortize over answers this short.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from longrag.generation.rapid import Draft, DraftLength, HybridDrafter, LMDrafter, NgramDrafter

ARMS = ("ngram", "llm", "plain")


class AdaptiveHybridDrafter(HybridDrafter):
    """:class:`HybridDrafter` choosing each round's arm by measured speed.

    Every round's tokens and seconds (drafting + verification, reported by
    :func:`~longrag.generation.rapid.rapid_generate` through :meth:`observe`) are summed per arm;
    each arm is first tried ``explore`` times (the plain step once), then the fastest available
    arm is used, and on every ``reprobe``-th round the other available arms get one more try,
    since acceptance changes along an answer. ``llm_length`` cuts LLM drafts as in the product's
    hybrid.
    """

    def __init__(self, ngram: NgramDrafter, llm: LMDrafter, *, explore: int = 2, reprobe: int = 8,
                 llm_length: DraftLength | None = None) -> None:
        super().__init__(ngram, llm, llm_length=llm_length)
        self.explore = {"ngram": explore, "llm": explore, "plain": 1}
        self.reprobe = reprobe
        self.tally = {arm: [0, 0, 0.0] for arm in ARMS}  # rounds, tokens, seconds
        self._rounds = 0

    def rate(self, arm: str) -> float:
        """Tokens per second of ``arm`` so far in this answer."""
        _, tokens, seconds = self.tally[arm]
        return tokens / seconds if seconds > 0 else 0.0

    def choose(self, arms: Sequence[str]) -> str:
        """The arm to use this round among ``arms``, by measured speed."""
        self._rounds += 1
        for arm in arms:
            if self.tally[arm][0] < self.explore[arm]:
                return arm
        ranked = sorted(arms, key=self.rate, reverse=True)
        if self._rounds % self.reprobe == 0 and len(ranked) > 1:
            return ranked[1 + (self._rounds // self.reprobe) % (len(ranked) - 1)]
        return ranked[0]

    def observe(self, draft: Draft, accepted: int, seconds: float, *, verify_seconds: float | None = None) -> None:
        """The product hybrid's bookkeeping, plus this round's tokens and seconds for its arm."""
        super().observe(draft, accepted, seconds, verify_seconds=verify_seconds)
        arm = draft.source if draft.tokens else "plain"
        if arm in self.tally:
            t = self.tally[arm]
            t[0], t[1], t[2] = t[0] + 1, t[1] + accepted + 1, t[2] + seconds

    def propose(self, generated: Sequence[int], gamma: int, *, temperature: float,
                generator: torch.Generator | None) -> Draft:
        d = self.ngram.propose(generated, gamma)
        arm = self.choose(ARMS if d.tokens else ("llm", "plain"))
        if arm == "ngram":
            return d
        if arm == "plain":
            return Draft([], None, "none")  # a plain target step
        return self.llm_draft(generated, gamma, temperature=temperature, generator=generator)
