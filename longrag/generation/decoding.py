"""Greedy / sampled decoding with an explicit KV cache: prefill, then one token at a time.

Written in the gpt-fast spirit: ``prefill`` and ``decode_one`` are separate, the cache is a
transformers ``DynamicCache`` passed explicitly, and timing is measured where it happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import DynamicCache

from longrag.generation.fastkv import new_cache

TokenCallback = Callable[[str], None]


def common_prefix(held: Sequence[int], seq: Sequence[int]) -> int:
    """How many leading tokens of ``seq`` a cache holding ``held`` already has."""
    if len(held) <= len(seq) and list(seq[: len(held)]) == list(held):
        return len(held)
    n = 0
    for a, b in zip(held, seq):
        if a != b:
            break
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    ttft_ms: float
    total_ms: float
    tokens_per_s: float
    rejected: tuple[str, ...] = ()  # earlier answers ``generate(accept=...)`` turned down
    logprobs: tuple[float, ...] = ()  # log-probability of each chosen token (how sure the decoder was)

    @property
    def confidence(self) -> float | None:
        """exp(mean token log-probability) of the answer: 1.0 = every token certain; None: no tokens."""
        return float(torch.tensor(self.logprobs).mean().exp()) if self.logprobs else None


@torch.inference_mode()
def prefill(model: Any, input_ids: torch.Tensor, cache: DynamicCache, *, chunk: int = 2048) -> torch.Tensor:
    """Run the prompt through the model in chunks; return the last position's logits."""
    logits = None
    n = input_ids.shape[1]
    for start in range(0, n, chunk):
        piece = input_ids[:, start : start + chunk]
        out = model(input_ids=piece, cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
    assert logits is not None
    return logits


@torch.inference_mode()
def decode_one(model: Any, token: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    out = model(input_ids=token.view(1, 1), cache=cache, use_cache=True)
    return out.logits[:, -1, :]


def pick(logits: torch.Tensor, *, temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def stop_token_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids


def decode_loop(
    logits: torch.Tensor,
    step: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Any,
    *,
    prompt_tokens: int,
    t0: float,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    on_token: TokenCallback | None = None,
) -> GenerationResult:
    """Pick tokens from ``logits`` until a stop token or ``max_new_tokens``, streaming text.

    ``step(token)`` feeds one chosen token through whatever cache the caller holds and returns
    the next logits, so every cache (plain, SentenceKV, embedding prompts) shares this loop.
    ``t0`` is when the request started: TTFT runs from it to the first chosen token.
    """
    stops = stop_token_ids(tokenizer)
    out: list[int] = []
    logprobs: list[float] = []
    ttft = 0.0
    emitted = ""
    for i in range(max_new_tokens):
        token = pick(logits, temperature=temperature, generator=generator)
        tid = int(token.item())
        if i == 0:
            ttft = (time.perf_counter() - t0) * 1000
        if tid in stops:
            break
        out.append(tid)
        logprobs.append(float(torch.log_softmax(logits.float().reshape(-1), dim=0)[tid]))
        if on_token is not None:
            text = tokenizer.decode(out, skip_special_tokens=True)
            if len(text) > len(emitted) and not text.endswith("\ufffd"):
                on_token(text[len(emitted) :])
                emitted = text
        if i + 1 < max_new_tokens:
            logits = step(token)
    total = (time.perf_counter() - t0) * 1000
    decode_ms = max(total - ttft, 1e-6)
    text = tokenizer.decode(out, skip_special_tokens=True)
    if on_token is not None and len(text) > len(emitted):
        on_token(text[len(emitted) :])
    tps = (len(out) - 1) / (decode_ms / 1000) if len(out) > 1 else 0.0
    return GenerationResult(text.strip(), out, prompt_tokens, ttft, total, tps, logprobs=tuple(logprobs))


def generate(
    model: Any,
    tokenizer: Any,
    input_ids: Sequence[int],
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    on_token: TokenCallback | None = None,
    seed: int = 0,
    accept: Callable[[str], bool] | None = None,
    max_tries: int = 3,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` after ``input_ids``; greedy when temperature is 0.

    ``accept`` verifies an answer: one it turns down is decoded again from the same prompt cache
    (cropped back, no second prefill) with the first tokens of every rejected answer excluded,
    up to ``max_tries`` answers in all; the last one is returned whatever ``accept`` says.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    cache = new_cache()
    t0 = time.perf_counter()
    logits = prefill(model, ids, cache)
    banned: list[int] = []
    rejected: list[str] = []
    while True:
        first = logits
        if banned:
            first = logits.clone()
            first[..., banned] = float("-inf")
        res = decode_loop(
            first, lambda token: decode_one(model, token, cache), tokenizer,
            prompt_tokens=ids.shape[1], t0=t0, max_new_tokens=max_new_tokens,
            temperature=temperature, generator=generator, on_token=on_token,
        )
        if accept is None or not res.token_ids or len(rejected) + 1 >= max_tries or accept(res.text):
            return replace(res, rejected=tuple(rejected))
        rejected.append(res.text)
        banned.append(res.token_ids[0])
        extra = cache.get_seq_length() - ids.shape[1]
        if extra > 0:
            cache.crop(-extra)  # back to the prompt (a negative crop removes that many tokens)
