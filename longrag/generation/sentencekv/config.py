"""The method's parameters and the models it supports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longrag.generation.sentencekv.selection import POLICIES

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "mistral"})


class SentenceKVError(ValueError):
    """A request SentenceKV cannot serve (batch > 1, unsupported model): use a full cache."""


@dataclass(frozen=True, slots=True)
class SentenceKVConfig:
    """Parameters of the method (defaults: the paper's, Llama-3.1-8B setting).

    Attributes:
        budget: tau, tokens selected by sentence ranking at each decode step (per KV head).
        retention_ratio: r; the prefill keeps ``r * tau`` tokens per KV head (paper: 2-3).
        sink: first tokens always attended.
        recent: last tokens always attended.
        window: observation window of the SnapKV-style prefill retention.
        kernel: max-pool kernel over the retention scores.
        max_sentence_tokens: longer sentences are split into pieces of this many tokens
            (not from the paper; it bounds a bucket so a single enormous sentence cannot
            swallow the budget).
        policy: the row-selection policy, by name in
            :data:`~longrag.generation.sentencekv.selection.POLICIES`: ``"sentencekv"`` (the
            method); other policies are registered with
            :func:`~longrag.generation.sentencekv.selection.register_policy`.
        retention: ``"sentence"``: whole sentences (see
            :func:`~longrag.generation.sentencekv.selection.sentence_keep`; the product's default:
            it matched a full cache on 12 needles at 8k where the paper's ``"token"`` retention,
            SnapKV top tokens per head, missed every one).
    """

    budget: int = 1024
    retention_ratio: float = 2.0
    sink: int = 32
    recent: int = 32
    window: int = 32
    kernel: int = 7
    max_sentence_tokens: int = 64
    policy: str = "sentencekv"
    retention: str = "sentence"

    def __post_init__(self) -> None:
        if self.retention not in ("token", "sentence"):
            raise ValueError(f"unknown retention {self.retention!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}")
        if self.budget < 1 or self.retention_ratio < 1 or self.sink < 0 or self.recent < 1 or self.window < 1:
            raise ValueError(f"invalid SentenceKV parameters: {self}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("kernel must be a positive odd number")
        if self.max_sentence_tokens < 1:
            raise ValueError("max_sentence_tokens must be >= 1")

    @property
    def retained(self) -> int:
        return int(round(self.retention_ratio * self.budget))

    @property
    def full_kv_limit(self) -> int:
        """Prompts of at most this many tokens keep an exact full cache."""
        return self.budget + self.sink + self.recent

    @property
    def sentence_cap(self) -> int:
        return max(1, min(self.max_sentence_tokens, self.budget))


def check_supported(config: Any) -> None:
    """Raise :class:`SentenceKVError` unless the model is a supported Llama-family decoder."""
    text = config.get_text_config(decoder=True)
    mt = getattr(text, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise SentenceKVError(f"SentenceKV supports model types {sorted(SUPPORTED_MODEL_TYPES)}, not {mt!r}")
    if getattr(text, "use_sliding_window", False) and getattr(text, "sliding_window", None):
        raise SentenceKVError("SentenceKV does not support sliding-window attention layers")
