"""The speculative loop: the drafter proposes, the target (long context) verifies in one pass.

Each round: the drafter proposes up to ``gamma`` tokens; the target's cache is advanced to the
committed tokens plus the draft and returns ``k + 1`` rows of logits; :func:`verify` accepts a
prefix of the draft and picks the next token; the target's cache is cropped back to the
committed tokens; the drafter observes the round's outcome. Text deltas stream after every round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from longrag.generation.decoding import TokenCallback, stop_token_ids
from longrag.generation.rapid.drafters import Drafter
from longrag.generation.rapid.kvstate import TargetState
from longrag.generation.rapid.verification import verify


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
