"""Draft-length policy: how many tokens to draft this round, learnt while the answer is decoded.

Each kind of draft (n-gram lookups, LLM drafts) keeps a :class:`DraftLength`: a cost model of a
round (drafting plus one verification) and the per-token acceptance of that kind, both measured
along the answer, from which :meth:`DraftLength.best` picks the length with the most expected
tokens per unit of cost (0: a plain target step). :class:`LearntLengths` carries the estimates
from one answer to the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longrag.generation.rapid.drafters import Draft


class DraftLength:
    """Cost-aware draft length for one kind of draft (n-gram or LLM), learnt along one answer.

    A round that drafts ``k`` tokens costs ``k`` drafting steps plus one verification of ``k + 1``
    tokens, modelled (in plain target steps) as ``1 + (slope + draft_cost) * k``; with a per-token
    acceptance ``a`` it yields ``(1 - a^(k+1)) / (1 - a)`` tokens in expectation. :meth:`best`
    returns the ``k`` (0 = a plain target step) with the most expected tokens per unit of cost.
    All three are measured while decoding: ``slope`` starts at the prior and follows a
    least-squares line through the observed verification times (every round: plain steps,
    n-gram and LLM drafts); ``draft_cost`` (0 for n-gram lookups) follows the observed drafting
    seconds per token over the fitted plain-step time; ``a`` is the maximum-likelihood estimate
    from this kind's drafts, accepted tokens / (accepted tokens + drafts ended by a rejection), a
    fully accepted draft counting as censored, with ``prior_weight`` pseudo-drafts at the prior;
    while no such draft is made the counts drift back toward the prior, so a cheap probe is tried
    again later.

    A fixed long draft is the worst case on a CPU, where verifying 11 tokens at 8k context costs
    about 2.6 target steps (bench/rapid.py cost model): a wrong lookup then costs 2.6 steps for
    one token.
    """

    def __init__(self, *, slope: float = 0.15, acceptance: float = 0.5, draft_cost: float = 0.0,
                 prior_weight: float = 2.0, recover: float = 0.1, prior_rounds: float = 2.0) -> None:
        if slope < 0 or draft_cost < 0 or not 0 < acceptance < 1 or prior_weight <= 0 or not 0 <= recover <= 1:
            raise ValueError("need slope >= 0, draft_cost >= 0, 0 < acceptance < 1, prior_weight > 0, "
                             "0 <= recover <= 1")
        self.prior_slope = slope
        self.prior_draft_cost = draft_cost
        self._drafting = [0.0, 0.0]  # drafted tokens, seconds
        self.prior_counts = (acceptance * prior_weight, (1 - acceptance) * prior_weight)
        self._counts = list(self.prior_counts)  # accepted tokens, drafts ended by a rejection
        self.recover = recover
        self.prior_rounds = prior_rounds
        self._sums = [0.0] * 5  # n, sum x, sum y, sum xx, sum xy  (x = drafted tokens, y = seconds)

    @classmethod
    def for_llm(cls, slope: float = 0.15) -> DraftLength:
        """Priors for LLM drafts: acceptance 0.7, drafting 0.4 plain steps per token (an fp16
        SmolLM2 step at 1k context vs an fp32 one at 8k here); both are re-measured while decoding."""
        return cls(slope=slope, acceptance=0.7, draft_cost=0.4)

    def carried(self, *, weight: float = 8.0) -> DraftLength:
        """A fresh estimate for the next answer that starts from this one's measurements.

        The measured acceptance, slope and drafting cost become the new priors, the acceptance
        worth at most ``weight`` drafts and the cost line at most ``weight`` rounds, so the next
        answer skips most of the learning yet a different document still moves the estimates
        within a few rounds. Where probing drifts back to is the carried acceptance, not
        the original prior: a draft kind measured not to pay stops being probed at its prior.
        """
        if weight <= 0:
            raise ValueError("weight must be > 0")
        accepted, rejected = self._counts
        return DraftLength(
            slope=self.slope, acceptance=min(0.98, max(0.02, self.acceptance)), draft_cost=self.draft_cost,
            prior_weight=min(weight, accepted + rejected), recover=self.recover,
            prior_rounds=min(weight, self.prior_rounds + self._sums[0]))

    @property
    def acceptance(self) -> float:
        """The per-token acceptance estimate."""
        accepted, rejected = self._counts
        return accepted / (accepted + rejected)

    def _line(self) -> tuple[float, float] | None:
        """``(plain step seconds, seconds per extra verified token)`` fitted, or ``None``."""
        n, sx, sy, sxx, sxy = self._sums
        var = n * sxx - sx * sx
        if n < 2 or var <= 1e-12:
            return None
        beta = (n * sxy - sx * sy) / var
        alpha = (sy - beta * sx) / n
        return (alpha, max(0.0, beta)) if alpha > 0 else None

    @property
    def slope(self) -> float:
        """Extra verification cost of each drafted token, as a fraction of a plain step (fitted,
        with the prior)."""
        line, n = self._line(), self._sums[0]
        if line is None:
            return self.prior_slope
        return (self.prior_rounds * self.prior_slope + n * line[1] / line[0]) / (self.prior_rounds + n)

    @property
    def draft_cost(self) -> float:
        """Drafting cost of each drafted token, as a fraction of a plain step (measured, with the prior)."""
        line = self._line()
        tokens, seconds = self._drafting
        if line is None or tokens == 0:
            return self.prior_draft_cost
        return (self.prior_rounds * self.prior_draft_cost + seconds / line[0]) / (self.prior_rounds + tokens)

    def best(self, gamma: int) -> int:
        """The draft length (``0..gamma``) with the most expected tokens per verification cost."""
        a, r = min(self.acceptance, 0.99), self.slope + self.draft_cost
        best_k, best_rate = 0, 1.0
        for k in range(1, max(0, gamma) + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (1 + r * k)
            if rate > best_rate + 1e-9:
                best_k, best_rate = k, rate
        return best_k

    def observe_verify(self, drafted: int, seconds: float) -> None:
        """A verification of ``drafted + 1`` tokens took ``seconds``."""
        x, y = float(drafted), float(seconds)
        for i, v in enumerate((1.0, x, y, x * x, x * y)):
            self._sums[i] += v

    def observe_drafting(self, drafted: int, seconds: float) -> None:
        """Drafting ``drafted`` tokens took ``seconds`` (LLM drafts; n-gram lookups cost ~nothing)."""
        self._drafting[0] += drafted
        self._drafting[1] += seconds

    def observe_round(self, draft: Draft, accepted: int, *, kind: str, verify_seconds: float,
                      drafting_seconds: float | None = None) -> None:
        """One round of the decoding loop: its verification time always (plain steps and the
        other kind's drafts too), and, when it was a draft of this ``kind``, its acceptance and
        (``drafting_seconds``, LLM drafts) its drafting time."""
        self.observe_verify(len(draft.tokens), verify_seconds)
        if draft.source == kind and draft.tokens:
            self.observe_draft(len(draft.tokens), accepted)
            if drafting_seconds is not None:
                self.observe_drafting(len(draft.tokens), drafting_seconds)

    def observe_draft(self, drafted: int, accepted: int) -> None:
        """A draft of ``drafted`` tokens of this kind had its first ``accepted`` accepted (0 drafted:
        a round where :meth:`best` chose no draft)."""
        if drafted <= 0:
            for i, prior in enumerate(self.prior_counts):
                self._counts[i] += self.recover * (prior - self._counts[i])
            return
        self._counts[0] += accepted
        self._counts[1] += 1 if accepted < drafted else 0  # a fully accepted draft is censored


class LearntLengths:
    """Cost-aware draft-length estimates carried from one answer to the next (thread-safe): an
    answer of 24-48 tokens otherwise spends its first rounds re-learning what the previous answer
    measured. The caller picks the key; the RAPID mode uses the models, the kind of draft and the
    context size (bit length of its token count: verification cost grows with the context)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple, DraftLength] = {}

    def start(self, key: tuple, make: Callable[[], DraftLength]) -> DraftLength:
        """The estimate to start an answer with: the last answer's, carried, else ``make()``."""
        with self._lock:
            last = self._last.get(key)
        return last.carried() if last is not None else make()

    def keep(self, key: tuple, length: DraftLength | None) -> None:
        if length is not None:
            with self._lock:
                self._last[key] = length
