"""RAPID: retrieval-augmented speculative decoding for long-context answers (arXiv 2502.20330).

The *target* model reads the whole long context; a *drafter* reads only a short context
retrieved from the same document and proposes up to ``gamma`` tokens, which the target checks
in one forward pass. Both keep their own KV cache (:class:`KVState`), cropped back to the
committed tokens after every verification.

Knowledge transfer: with target logits ``z``, ``p = softmax(z / T)`` and drafter distribution
``q``, the target distribution used for acceptance is::

    p_hat = softmax(z / T + eta * (q - p))      # only where p >= tail * max(p)

A draft token ``x`` is accepted with probability ``min(1, p_hat(x) / q(x))``; on rejection the
replacement is drawn from ``norm(max(p - p_hat, p - q, 0))``; after a fully accepted draft the
bonus token is drawn from ``p``. ``eta = 0`` is exactly standard speculative sampling (the
output follows the target's distribution); ``eta > 0`` pulls the output toward the drafter
on purpose. With ``temperature = 0`` acceptance is argmax agreement on the adjusted logits.

Everything here takes plain inputs (token ids, scores, callables) and imports no service code.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from longrag.generation.decoding import TokenCallback, common_prefix, stop_token_ids
from longrag.generation.fastkv import new_cache

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Drafter context: retrieval over the document's own fixed-size token chunks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """A run of ``[tok_start, tok_end)`` document tokens covering chars ``[start, end)``."""

    index: int
    tok_start: int
    tok_end: int
    start: int
    end: int

    @property
    def tokens(self) -> int:
        return self.tok_end - self.tok_start


@dataclass(frozen=True, slots=True)
class RetrievedContext:
    """The drafter's context: selected chunks in document order and their joined text."""

    text: str
    chunks: list[TokenChunk]
    scores: list[float]
    document_tokens: int
    budget_tokens: int
    relevance: list[float] | None = None  # what the threshold applied to, per chunk (None: the scores)

    @property
    def top_relevance(self) -> float | None:
        """The best selected chunk's relevance (the threshold's scale); None when nothing was kept."""
        rel = self.scores if self.relevance is None else self.relevance
        return max(rel) if rel else None

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.chunks)

    @property
    def empty(self) -> bool:
        return not self.chunks


ChunkScorer = Callable[[Sequence[TokenChunk]], Sequence[float]]
"""Scores chunks against the question (higher is better); injected by callers."""


def token_chunks(offsets: Sequence[tuple[int, int]], *, chunk_tokens: int = 512) -> list[TokenChunk]:
    """Split a tokenised text (its ``offset_mapping``) into consecutive, non-overlapping chunks.

    Args:
        offsets: ``(char_start, char_end)`` per token, as a fast tokenizer returns them.
        chunk_tokens: tokens per chunk (the paper uses ~512); the last chunk may be shorter.
    """
    if chunk_tokens <= 0:
        raise ValueError("chunk_tokens must be positive")
    out = []
    for i, s in enumerate(range(0, len(offsets), chunk_tokens)):
        e = min(s + chunk_tokens, len(offsets))
        out.append(TokenChunk(i, s, e, int(offsets[s][0]), int(offsets[e - 1][1])))
    return out


def context_budget(document_tokens: int, *, budget_tokens: int = 4096, budget_ratio: int = 24) -> int:
    """The drafter's token budget: ``max(budget_tokens, document_tokens / budget_ratio)``."""
    return max(int(budget_tokens), math.ceil(document_tokens / max(1, budget_ratio)))


def select_chunks(
    chunks: Sequence[TokenChunk],
    scores: Sequence[float],
    *,
    budget: int,
    threshold: float = 0.3,
    relevance: Sequence[float] | None = None,
) -> list[int]:
    """Indices of the best chunks that fit ``budget`` tokens, in document order.

    Chunks are taken best ``scores`` first; a chunk whose ``relevance`` (default: its score) is
    under ``threshold`` is never taken. A separate relevance lets a rank-only score (e.g. a
    reciprocal-rank fusion, whose values say nothing absolute) order the chunks while the
    threshold stays on a similarity scale (the paper's cosine).
    """
    relevance = scores if relevance is None else relevance
    if not len(chunks) == len(scores) == len(relevance):
        raise ValueError(f"{len(chunks)} chunks but {len(scores)} scores and {len(relevance)} relevances")
    order = sorted(range(len(chunks)), key=lambda i: -float(scores[i]))
    picked: list[int] = []
    used = 0
    for i in order:
        if float(relevance[i]) < threshold:
            continue
        if used + chunks[i].tokens > budget:
            continue
        picked.append(i)
        used += chunks[i].tokens
    return sorted(picked)


def retrieve_context(
    text: str,
    tokenizer: Any,
    scorer: ChunkScorer | Sequence[float],
    *,
    chunk_tokens: int = 512,
    budget_tokens: int = 4096,
    budget_ratio: int = 24,
    threshold: float = 0.3,
    separator: str = "\n\n",
    relevance: ChunkScorer | Sequence[float] | None = None,
) -> RetrievedContext:
    """Build the drafter's context from ``text``: chunk, score, select, restore document order.

    Args:
        text: the long context the target reads.
        tokenizer: the decoder's (fast) tokenizer, used for token chunks and offsets.
        scorer: a callable scoring the chunks, or precomputed scores (one per chunk).
        chunk_tokens: chunk size in decoder tokens (no overlap; capped at the budget).
        budget_tokens: minimum drafter budget; the budget is ``max(budget_tokens, s / budget_ratio)``.
        budget_ratio: the ``24`` in ``s / 24``.
        threshold: chunks whose relevance is under it are dropped (empty result: callers fall
            back to target-only decoding).
        separator: joins non-adjacent chunks.
        relevance: what ``threshold`` applies to, scored like ``scorer`` (default: the scores);
            ``scorer`` then only orders the chunks.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    budget = context_budget(len(offsets), budget_tokens=budget_tokens, budget_ratio=budget_ratio)
    chunks = token_chunks(offsets, chunk_tokens=max(1, min(chunk_tokens, budget)))
    scores = list(scorer(chunks)) if callable(scorer) else list(scorer)
    rel = None if relevance is None else list(relevance(chunks)) if callable(relevance) else list(relevance)
    picked = select_chunks(chunks, scores, budget=budget, threshold=threshold, relevance=rel) if chunks else []
    parts: list[str] = []
    prev = -2
    for i in picked:
        c = chunks[i]
        piece = text[c.start : c.end]
        if parts and i == prev + 1:
            parts[-1] += text[chunks[prev].end : c.start] + piece  # adjacent: keep the original join
        else:
            parts.append(piece)
        prev = i
    return RetrievedContext(
        separator.join(p.strip() for p in parts),
        [chunks[i] for i in picked],
        [float(scores[i]) for i in picked],
        len(offsets),
        budget,
        None if rel is None else [float(rel[i]) for i in picked],
    )


# --------------------------------------------------------------------------------------------
# KV state: a model with its cache and the exact tokens the cache holds
# --------------------------------------------------------------------------------------------


def crop_to(cache: DynamicCache, length: int) -> None:
    """Crop ``cache`` to its first ``length`` positions (transformers 5 ``crop`` takes -removed)."""
    have = cache.get_seq_length()
    if length < have:
        cache.crop(length - have)


@dataclass
class KVState:
    """A causal LM, its ``DynamicCache`` and the token ids whose keys/values the cache holds.

    ``advance(seq)`` brings the cache to ``seq[:-1]`` plus whatever it must feed, reusing the
    longest common prefix, and returns the logits after feeding the pending tokens.
    """

    model: Any
    cache: DynamicCache = field(default_factory=new_cache)
    tokens: list[int] = field(default_factory=list)
    prefill_chunk: int = 2048

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def crop(self, length: int) -> None:
        crop_to(self.cache, length)
        del self.tokens[length:]

    @torch.inference_mode()
    def feed(self, ids: Sequence[int], *, keep: int = 1) -> torch.Tensor:
        """Append ``ids`` to the cache; return float logits of the last ``keep`` positions ``[keep, V]``."""
        if not ids:
            raise ValueError("nothing to feed")
        ids = [int(i) for i in ids]
        keep = max(1, min(keep, len(ids)))
        head, tail = ids[: len(ids) - keep], ids[len(ids) - keep :]
        for s in range(0, len(head), self.prefill_chunk):
            piece = torch.tensor([head[s : s + self.prefill_chunk]], dtype=torch.long, device=self.device)
            self.model(input_ids=piece, cache=self.cache, use_cache=True, logits_to_keep=1)
        t = torch.tensor([tail], dtype=torch.long, device=self.device)
        logits = self.model(input_ids=t, cache=self.cache, use_cache=True, logits_to_keep=keep).logits[0].float()
        self.tokens.extend(ids)
        return logits

    def advance(self, seq: Sequence[int], *, extra: Sequence[int] = (), keep: int = 1) -> torch.Tensor:
        """Make the cache hold ``seq`` (+ ``extra``), feeding at least one token; return logits.

        The cache is cropped to the common prefix with ``seq`` (at most ``len(seq) - 1`` so the
        last token is always fed), then ``seq``'s remaining tokens and ``extra`` are fed.
        """
        keep_len = min(common_prefix(self.tokens, seq), len(seq) - 1)
        self.crop(max(0, keep_len))
        pending = list(seq[len(self.tokens) :]) + list(extra)
        return self.feed(pending, keep=keep)

    def prefill(self, seq: Sequence[int]) -> None:
        """Fill the cache with ``seq[:-1]`` (the last token is fed by the first step)."""
        keep_len = min(common_prefix(self.tokens, seq), len(seq) - 1)
        self.crop(max(0, keep_len))
        rest = list(seq[len(self.tokens) : len(seq) - 1])
        if rest:
            self.feed(rest)


# --------------------------------------------------------------------------------------------
# Drafters
# --------------------------------------------------------------------------------------------


@dataclass
class Draft:
    """Proposed tokens and, per token, the drafter's distribution ``q`` over the vocabulary.

    ``probs`` is ``None`` for a deterministic proposal (``q`` = one-hot on the token).
    """

    tokens: list[int]
    probs: torch.Tensor | None
    source: str = "llm"


class TargetState(Protocol):
    """What the speculative loop needs of the target's cache: :class:`KVState`, or
    :class:`longrag.generation.sentencekv.SentenceKVState` for a SentenceKV target."""

    tokens: list[int]

    def prefill(self, seq: Sequence[int]) -> None: ...

    def advance(self, seq: Sequence[int], *, extra: Sequence[int] = (), keep: int = 1) -> torch.Tensor: ...

    def crop(self, length: int) -> None: ...


class Drafter(Protocol):
    def propose(self, generated: Sequence[int], gamma: int, *, temperature: float,
                generator: torch.Generator | None) -> Draft: ...


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
        within a few rounds. Where probing drifts back to is the carried acceptance, no longer
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

    With ``adaptive``, each round picks by measured speed among the arms available: an n-gram
    draft (when the lookup matched), an LLM draft, or a plain target step (an empty draft). Every
    round's tokens and seconds (drafting + verification, reported by :func:`rapid_generate`
    through :meth:`observe`) are summed per arm; each arm is first tried ``explore`` times (the
    plain step once), then the fastest available arm is used, and on every ``reprobe``-th round
    the other available arms get one more try, since acceptance changes along an answer.

    With ``llm_length`` (a :class:`DraftLength` with the LLM's drafting cost) an LLM draft is cut
    to its cost-aware length, and a length of 0 makes the round a plain target step: an LLM
    drafter whose acceptance does not pay for its steps and the longer verification is not used.
    """

    def __init__(self, ngram: NgramDrafter, llm: LMDrafter, *, adaptive: bool = False, explore: int = 2,
                 reprobe: int = 8, llm_length: DraftLength | None = None) -> None:
        self.ngram = ngram
        self.llm = llm
        self.llm_length = llm_length
        self.adaptive = adaptive
        self.explore = {"ngram": explore, "llm": explore, "plain": 1}
        self.reprobe = reprobe
        self.tally = {arm: [0, 0, 0.0] for arm in ("ngram", "llm", "plain")}  # rounds, tokens, seconds
        self._rounds = 0

    def rate(self, arm: str) -> float:
        """Tokens per second of ``arm`` so far in this answer."""
        _, tokens, seconds = self.tally[arm]
        return tokens / seconds if seconds > 0 else 0.0

    def choose(self, arms: Sequence[str]) -> str:
        """The arm to use this round among ``arms`` (``adaptive``: by measured speed)."""
        if not self.adaptive:
            return arms[0]
        self._rounds += 1
        for arm in arms:
            if self.tally[arm][0] < self.explore[arm]:
                return arm
        ranked = sorted(arms, key=self.rate, reverse=True)
        if self._rounds % self.reprobe == 0 and len(ranked) > 1:
            return ranked[1 + (self._rounds // self.reprobe) % (len(ranked) - 1)]
        return ranked[0]

    def observe(self, draft: Draft, accepted: int, seconds: float, *, verify_seconds: float | None = None) -> None:
        """A round's outcome: ``accepted`` draft tokens (+1 token from the target) in ``seconds``
        (``verify_seconds`` of them verifying); also fed to the n-gram drafter's and the LLM's
        cost-aware lengths (every round's verification, each kind's own acceptance)."""
        self.ngram.observe(draft, accepted, seconds, verify_seconds=verify_seconds)
        if self.llm_length is not None:
            verifying = seconds if verify_seconds is None else verify_seconds
            self.llm_length.observe_round(draft, accepted, kind="llm", verify_seconds=verifying,
                                          drafting_seconds=max(0.0, seconds - verifying))
        arm = draft.source if draft.tokens else "plain"
        if arm in self.tally:
            t = self.tally[arm]
            t[0], t[1], t[2] = t[0] + 1, t[1] + accepted + 1, t[2] + seconds

    def propose(self, generated: Sequence[int], gamma: int, *, temperature: float,
                generator: torch.Generator | None) -> Draft:
        d = self.ngram.propose(generated, gamma)
        arm = self.choose(("ngram", "llm", "plain") if d.tokens else ("llm", "plain"))
        if arm == "ngram":
            return d
        if arm == "plain":
            return Draft([], None, "none")  # a plain target step
        if self.llm_length is not None:
            gamma = self.llm_length.best(gamma)
            if gamma == 0:
                self.llm_length.observe_draft(0, 0)
                return Draft([], None, "none")
        return self.llm.propose(generated, gamma, temperature=temperature, generator=generator)


# --------------------------------------------------------------------------------------------
# Verification: the retrieval-augmented target distribution and acceptance
# --------------------------------------------------------------------------------------------


def adjusted_logits(target_logits: torch.Tensor, q: torch.Tensor, *, eta: float, temperature: float,
                    tail: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, log-space logits of p_hat)`` for one position (or a batch on the last dim).

    ``p = softmax(z / T)``; ``p_hat = softmax(z / T + eta * (q - p))`` where ``p >= tail * max p``;
    tail tokens keep ``z / T``. With ``temperature <= 0`` the distributions use ``T = 1``.
    """
    t = temperature if temperature > 0 else 1.0
    z = target_logits.float() / t
    p = torch.softmax(z, dim=-1)
    if eta == 0:
        return p, z
    mask = p >= tail * p.max(dim=-1, keepdim=True).values
    return p, z + eta * (q - p) * mask


def _one_hot(tok: int, like: torch.Tensor) -> torch.Tensor:
    q = torch.zeros_like(like)
    q[tok] = 1.0
    return q


def rejection_residual(p: torch.Tensor, p_hat: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Where a rejected draft token's replacement comes from: ``norm(max(p - p_hat, p - q, 0))``
    (``p`` itself when that is all zero)."""
    resid = torch.clamp(torch.maximum(p - p_hat, p - q), min=0.0)
    total = float(resid.sum())
    return resid / total if total > 0 else p


@dataclass
class Verdict:
    accepted: int
    next_token: int


def verify(
    draft: Sequence[int],
    q: torch.Tensor | None,
    target_logits: torch.Tensor,
    *,
    eta: float,
    temperature: float,
    tail: float = 0.1,
    consensus: bool = False,
    residual: bool = False,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Accept a prefix of ``draft`` and choose the next token.

    Args:
        draft: the ``k`` proposed tokens.
        q: the drafter's distributions ``[k, V]`` (``None``: one-hot proposals, e.g. n-gram
            lookups; they carry no drafter distribution to transfer, so they are verified
            losslessly, as with ``eta = 0``: a one-hot ``q`` would otherwise add ``eta`` to the
            looked-up token's logit and, with a large ``eta``, accept whatever the lookup copied).
        target_logits: ``[k + 1, V]`` target logits; row ``i`` predicts ``draft[i]``, row ``k``
            the bonus token.
        consensus: the shift may add acceptances but never remove one: a draft token the plain
            target accepts is accepted at any ``eta`` (greedy: it is the target's own argmax;
            sampling: accepted with probability ``min(1, max(p, p_hat)(x) / q(x))``). Without it,
            ``eta * (q - p)`` lowers a token that both models rank first whenever the target is
            surer of it than the drafter, and a large ``eta`` can then emit a token neither model
            prefers. ``eta = 0`` is unchanged either way.
        residual: greedy only: a rejected draft token is replaced by the argmax of the rejection
            residual ``max(p - p_hat, p - q, 0)`` that sampling draws from (a token the target
            rates above the drafter or above ``p_hat``), not by the argmax of ``p_hat``. The
            output is then the drafter's token where the shift lifts it to the top and a
            target-favoured token elsewhere, never a third token that only ``eta * (q - p)``
            ranks first. ``eta = 0`` (lossless: the target's argmax) is unchanged.
    """
    k = len(draft)
    if q is None:
        eta = 0.0
    for i, x in enumerate(draft):
        z = target_logits[i]
        qi = q[i].to(z.device) if q is not None else _one_hot(x, z.float())
        p, adj = adjusted_logits(z, qi, eta=eta, temperature=temperature, tail=tail)
        if temperature <= 0:
            best = int(torch.argmax(adj).item())
            if best == x or (consensus and x == int(torch.argmax(p).item())):
                continue
            if residual and eta != 0:
                best = int(torch.argmax(rejection_residual(p, torch.softmax(adj, dim=-1), qi)).item())
            return Verdict(i, best)
        p_hat = torch.softmax(adj, dim=-1) if eta != 0 else p
        qx = float(qi[x])
        px = max(float(p_hat[x]), float(p[x])) if consensus else float(p_hat[x])
        ratio = 1.0 if qx <= 0 else px / qx
        u = float(torch.rand((), generator=generator))
        if u < min(1.0, ratio):
            continue
        dist = rejection_residual(p, p_hat, qi)
        return Verdict(i, int(torch.multinomial(dist, 1, generator=generator).item()))
    z = target_logits[k].float()
    if temperature <= 0:
        return Verdict(k, int(torch.argmax(z).item()))
    p = torch.softmax(z / temperature, dim=-1)
    return Verdict(k, int(torch.multinomial(p, 1, generator=generator).item()))


# --------------------------------------------------------------------------------------------
# The speculative loop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RapidConfig:
    """Options of :func:`rapid_generate`.

    Attributes:
        gamma: most tokens drafted per round (> 0).
        eta: knowledge-transfer strength (>= 0; 0 = standard speculative decoding).
        temperature: sampling temperature; 0 = greedy (argmax agreement).
        tail: tokens with target probability under ``tail * max`` keep the plain target logit.
        consensus: a draft token the plain target would accept is accepted at any ``eta``
            (see :func:`verify`).
        residual: greedy rejections emit the argmax of the rejection residual, not of ``p_hat``
            (see :func:`verify`).
        max_new_tokens: answer length cap.
        seed: sampling seed.
    """

    gamma: int = 10
    eta: float = 0.0
    temperature: float = 0.0
    tail: float = 0.1
    consensus: bool = False
    residual: bool = False
    max_new_tokens: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        if self.gamma <= 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}")
        if self.eta < 0 or not math.isfinite(self.eta):
            raise ValueError(f"eta must be a finite number >= 0, got {self.eta}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 <= self.tail <= 1:
            raise ValueError(f"tail must be in [0, 1], got {self.tail}")
        if self.max_new_tokens <= 0:
            raise ValueError("max_new_tokens must be positive")


@dataclass
class RapidResult:
    """What :func:`rapid_generate` produced, with acceptance statistics and timings."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    ttft_ms: float
    total_ms: float
    tokens_per_s: float
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    target_calls: int = 0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    ngram_rounds: int = 0
    fallback: bool = False
    first_tokens: int = 0  # tokens out by ttft (1 for plain decoding, a whole round for RAPID)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Draft tokens accepted per verification round."""
        return self.accepted / self.rounds if self.rounds else 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted": round(self.mean_accepted, 3),
            "drafted": self.drafted,
            "accepted": self.accepted,
            "rounds": self.rounds,
            "target_calls": self.target_calls,
            "ngram_rounds": self.ngram_rounds,
            "draft_ms": round(self.draft_ms, 2),
            "verify_ms": round(self.verify_ms, 2),
            "fallback_target_only": self.fallback,
        }


class _Emitter:
    """Streams the decoded text's growth (never half a UTF-8 character)."""

    def __init__(self, tokenizer: Any, on_token: TokenCallback | None) -> None:
        self.tok = tokenizer
        self.cb = on_token
        self.emitted = ""

    def update(self, ids: Sequence[int], *, final: bool = False) -> None:
        if self.cb is None:
            return
        text = self.tok.decode(list(ids), skip_special_tokens=True)
        if len(text) > len(self.emitted) and (final or not text.endswith("\ufffd")) and text.startswith(self.emitted):
            self.cb(text[len(self.emitted) :])
            self.emitted = text


def _finish(out: list[int], stops: set[int], limit: int) -> tuple[list[int], bool]:
    for i, t in enumerate(out):
        if t in stops:
            return out[:i], True
    if len(out) >= limit:
        return out[:limit], True
    return out, False


def check_same_tokenizer(target_tokenizer: Any, drafter_tokenizer: Any) -> None:
    """Raise ``ValueError`` unless both tokenizers map text to the same ids."""
    if target_tokenizer is drafter_tokenizer:
        return
    a, b = target_tokenizer.get_vocab(), drafter_tokenizer.get_vocab()
    if a != b:
        raise ValueError(
            f"drafter and target tokenizers differ (vocab sizes {len(b)} vs {len(a)}); "
            "RAPID needs a drafter that shares the target's tokenizer"
        )
    probe = "Speculative decoding: 12 tokens, verified once."
    if target_tokenizer(probe, add_special_tokens=False)["input_ids"] != drafter_tokenizer(
        probe, add_special_tokens=False
    )["input_ids"]:
        raise ValueError("drafter and target tokenizers split text differently; RAPID needs the same tokenizer")


def autoregressive(
    target: TargetState,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    *,
    config: RapidConfig = RapidConfig(),
    on_token: TokenCallback | None = None,
) -> RapidResult:
    """Target-only decoding on a :class:`TargetState` (the fallback and the baseline)."""
    t0 = time.perf_counter()
    prompt = list(prompt_ids)
    stops = stop_token_ids(tokenizer)
    gen = torch.Generator().manual_seed(config.seed) if config.temperature > 0 else None
    emit = _Emitter(tokenizer, on_token)
    out: list[int] = []
    ttft = 0.0
    target.prefill(prompt)
    calls = 0
    while True:
        logits = target.advance(prompt + out)[-1]
        calls += 1
        if config.temperature > 0:
            tok = int(torch.multinomial(torch.softmax(logits / config.temperature, -1), 1, generator=gen).item())
        else:
            tok = int(torch.argmax(logits).item())
        if not out:
            ttft = (time.perf_counter() - t0) * 1000
        out.append(tok)
        out, done = _finish(out, stops, config.max_new_tokens)
        emit.update(out)
        if done:
            break
    return _result(tokenizer, out, prompt, t0, ttft, emit, target_calls=calls, fallback=True, first_tokens=1)


def _result(tokenizer: Any, out: list[int], prompt: list[int], t0: float, ttft: float, emit: _Emitter,
            **kw: Any) -> RapidResult:
    total = (time.perf_counter() - t0) * 1000
    emit.update(out, final=True)
    decode_ms = max(total - ttft, 1e-6)
    tps = (len(out) - 1) / (decode_ms / 1000) if len(out) > 1 else 0.0
    text = tokenizer.decode(out, skip_special_tokens=True).strip()
    return RapidResult(text, out, len(prompt), ttft, total, tps, **kw)


def rapid_generate(
    target: TargetState,
    drafter: Drafter | None,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    *,
    config: RapidConfig = RapidConfig(),
    on_token: TokenCallback | None = None,
) -> RapidResult:
    """Speculative decoding: ``drafter`` proposes, ``target`` (long context) verifies.

    Args:
        target: the target's :class:`KVState` (may already hold a prefix of ``prompt_ids``) or
            :class:`~longrag.generation.sentencekv.SentenceKVState` (holding ``prompt_ids``).
        drafter: a :class:`LMDrafter`, :class:`NgramDrafter` or :class:`HybridDrafter`;
            ``None`` falls back to target-only decoding.
        tokenizer: the shared tokenizer (stop tokens, streaming).
        prompt_ids: the target's prompt (long context + question).
        config: :class:`RapidConfig`.
        on_token: streaming callback receiving text deltas.
    """
    if drafter is None:
        return autoregressive(target, tokenizer, prompt_ids, config=config, on_token=on_token)
    t0 = time.perf_counter()
    prompt = list(prompt_ids)
    stops = stop_token_ids(tokenizer)
    gen = torch.Generator().manual_seed(config.seed) if config.temperature > 0 else None
    emit = _Emitter(tokenizer, on_token)
    res = dict(drafted=0, accepted=0, rounds=0, target_calls=0, draft_ms=0.0, verify_ms=0.0, ngram_rounds=0,
               first_tokens=0)
    out: list[int] = []
    ttft = 0.0
    target.prefill(prompt)
    while True:
        room = config.max_new_tokens - len(out)
        td = time.perf_counter()
        draft = drafter.propose(out, min(config.gamma, max(1, room - 1)), temperature=config.temperature,
                                generator=gen)
        tv = time.perf_counter()
        res["draft_ms"] += (tv - td) * 1000
        k = len(draft.tokens)
        logits = target.advance(prompt + out, extra=draft.tokens, keep=k + 1)
        res["target_calls"] += 1
        verdict = verify(draft.tokens, draft.probs, logits, eta=config.eta, temperature=config.temperature,
                         tail=config.tail, consensus=config.consensus, residual=config.residual,
                         generator=gen)
        tend = time.perf_counter()
        res["verify_ms"] += (tend - tv) * 1000
        if hasattr(drafter, "observe"):
            drafter.observe(draft, verdict.accepted, tend - td, verify_seconds=tend - tv)
        if k:
            res["rounds"] += 1
            res["drafted"] += k
            res["accepted"] += verdict.accepted
            res["ngram_rounds"] += int(draft.source == "ngram")
        out.extend(draft.tokens[: verdict.accepted])
        out.append(verdict.next_token)
        # the target cache holds prompt + out[:-1] + the rejected draft tail: crop it now
        target.crop(len(prompt) + len(out) - 1)
        if not ttft:
            ttft = (time.perf_counter() - t0) * 1000
            res["first_tokens"] = len(out)
        out, done = _finish(out, stops, config.max_new_tokens)
        emit.update(out)
        if done:
            break
    return _result(tokenizer, out, prompt, t0, ttft, emit, **res)
