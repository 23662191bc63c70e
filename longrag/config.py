"""Settings, read from environment variables prefixed ``LONGRAG_`` (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "longrag"


class Settings(BaseSettings):
    """All tunables of the product. Every field maps to ``LONGRAG_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="LONGRAG_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    decoder: str = "qwen2.5-coder-0.5b-instruct"
    embedder: str = "all-minilm-l6-v2"
    # How the embedder runs: torch (SentenceTransformer.encode) | onnx | onnx-int8 (onnxruntime,
    # exported once into the model cache) | auto (= onnx on CPU, torch on CUDA: bench/embed_speed.py
    # measured the fused fp32 ONNX export faster than plain encode; see docs/results-core.md).
    embed_backend: str = "auto"
    device: str = "auto"  # auto | cpu | cuda
    torch_threads: int = 0  # 0: leave torch's default
    # CPU decoders multiply by oneDNN pre-packed copies of their fp32 linear weights (one more copy
    # of those weights in memory; generation/packed.py): short blocks (verification, CFIC steps)
    # ~2x faster on Qwen, prefill 0-11% (bench/fastkv.py)
    packed_weights: bool = True

    max_file_bytes: int = 50 * 1024 * 1024
    chunk_tokens: int = 128  # target embedder tokens per sentence-aligned chunk
    max_sentence_chars: int = 1200  # longer "sentences" are split at whitespace

    top_k: int = 4  # chunks retrieved for the plain mode with context_unit=chunk
    # Plain mode context (docs/answers.md): window = sentence windows around the best sentences of the
    # top window_pool chunks (measured better than whole chunks on bench/books.py) | chunk = top_k chunks
    context_unit: Literal["window", "chunk"] = "window"
    window_pool: int = 24
    window_top: int = 12
    window_radius: int = 1
    # Answer checks (docs/answers.md): an answer that only repeats the question, or whose words are not in
    # the context, is decoded again with its first token excluded, up to answer_tries answers
    answer_checks: bool = True
    answer_tries: int = 3
    max_question_chars: int = 2000  # a longer question (a long quoted passage) is refused with a clear error

    # Retrieval (docs/situated.md): default retriever and situated-embedding options
    retriever: str = "hybrid"  # chunk | situated | bm25 | hybrid (best measured: bench/situated.py)
    situated_strategy: str = "residual"  # residual | late | trained
    situated_context: str = "pool"  # residual context vector: pool (neighbours' vectors) | encode
    situated_window: int = 2  # neighbouring chunks on each side in the context window
    situated_lead: int = 1  # the document's first chunks join every chunk's context
    situated_alpha: float = 0.5  # residual: s = normalize(c + alpha * context)
    situated_beta: float = 0.5  # score = sim(q, s) + beta * sim(q, c)
    situated_late_max_tokens: int = 256  # late chunking window (word pieces)
    situated_weights: Path | None = None  # trained adapter (default: the bundled one)
    rrf_k: int = 60  # hybrid: reciprocal rank fusion constant
    # Title-link hop (docs/situated.md): the first link_hop hits are read for titles of other
    # documents, whose first chunks go right after the best link_keep hits; 0 = off.
    # Picked on HotpotQA questions outside the evaluation set (bench/links_dev.py).
    link_hop: int = 5
    link_keep: int = 2
    max_new_tokens: int = 48
    full_context_tokens: int = 0  # 0: the decoder's own window minus room for the answer

    # SentenceKV (docs/sentencekv.md); defaults from the paper (tau = 1024, r = 2, 32 sink / recent)
    sentencekv_budget: int = 1024  # tau: tokens selected by sentence ranking per decode step
    sentencekv_ratio: float = 2.0  # r: the prefill retains r * tau tokens per KV head
    sentencekv_sink: int = 32
    sentencekv_recent: int = 32
    sentencekv_max_sentence: int = 64  # longer sentences are cut into buckets of this many tokens
    # prefill retention: sentence (whole sentences: matched full KV on 12 needles at 8k, bench/results/sentencekv_needles.json)
    # or token (SnapKV top tokens per head, the paper: missed every needle there)
    sentencekv_retention: str = "sentence"
    sentencekv_min_context: int = 4096  # `full` mode uses SentenceKV above this many context tokens
    sentencekv_doc_cache: bool = True  # persist each document's compressed cache for later questions
    sentencekv_at_ingest: bool = False  # build that cache at ingestion (ingest hook) instead of 1st question

    # REFRAG (docs/refrag.md): compressed chunk embeddings in the decoder
    refrag_k: int = 16  # decoder tokens per compressed chunk (8 | 16 | 32; a projector must exist)
    refrag_p: float = 0.1  # fraction of chunks expanded back to raw tokens
    refrag_policy: str = "query"  # query (most similar to the question) | ppl (highest perplexity) | none
    refrag_max_chunks: int = 256  # context taken around the best hit, in chunks (256 x 16 = 4096 tokens)
    refrag_weights: Path | None = None  # projector checkpoint (default: the bundled one for the decoder and k)
    refrag_at_ingest: bool = True  # once the refrag mode is loaded, compute chunk embeddings at ingestion

    # RAPID (docs/rapid.md): retrieval-augmented speculative decoding, mode `rapid`
    rapid_drafter: str | None = None  # drafter decoder (registry name / path); None: the target's own weights
    # drafter weights: fp16 keeps a half-precision copy of the linear weights for one-token steps
    # (fp32 weights still serve prefill blocks; measured faster at 8k: bench/rapid.py) | bf16 | fp32
    rapid_drafter_weights: str = "fp16"
    rapid_drafter_kind: str = "hybrid"  # llm | hybrid (n-gram lookup in the retrieved context, else llm) | ngram
    rapid_gamma: int = 10  # most tokens drafted per verification
    rapid_eta: float = 0.0  # knowledge transfer strength (0 = lossless speculative decoding)
    rapid_temperature: float = 0.0  # 0 = greedy
    rapid_tail: float = 0.1  # eta's shift skips tokens whose target probability is under tail * max (paper: 0.1)
    rapid_consensus: bool = False  # a draft token the plain target accepts is kept at any eta (no effect at eta 0)
    # greedy, eta > 0: a rejected draft token is replaced by the argmax of the rejection residual
    # max(p - p_hat, p - q, 0), not of p_hat (no third token only the shift ranks first; docs/rapid.md)
    rapid_residual: bool = False
    rapid_chunk_tokens: int = 512  # drafter retrieval unit, decoder tokens, no overlap
    rapid_budget_tokens: int = 1024  # drafter context = max(this, s / 24) tokens (paper: 4096 at 128K)
    rapid_threshold: float = 0.3  # chunks whose dense cosine is under this are dropped (the retriever orders the rest)
    rapid_min_confidence: float = 0.3  # stop drafting when the drafter's next-token probability is lower
    rapid_max_ngram: int = 3  # hybrid / ngram drafter: longest n-gram looked up
    rapid_min_ngram: int = 1  # shortest n-gram match drafted from (2 measured slower at 8k: bench/rapid.py)
    # hybrid / ngram drafter: draft length, "cost" (the length with the most expected tokens per unit of
    # drafting + verification cost, all learnt while decoding, 0 = a plain target step; n-gram drafts,
    # and the hybrid's LLM drafts: generation/rapid/draft_length.py DraftLength) | "fixed" (n-gram: as long as the
    # match, LLM: up to gamma with the confidence stop)
    rapid_draft_length: str = "cost"
    rapid_verify_slope: float = 0.15  # DraftLength's prior: extra verification cost per drafted token, in steps
    # cost-aware lengths: start each answer from the estimates the previous answer learnt (same models,
    # drafter, context size; per process) instead of the priors
    rapid_warm_start: bool = True
    # hybrid / ngram drafter: draft from a match only when this share of the n-gram's occurrences continue alike
    rapid_ngram_min_agreement: float = 0.5
    # hybrid / ngram drafter: look n-grams up in the target's whole context when the retrieved one has none
    # (before the LLM drafter); measured faster at 8k on both decoders over 18 questions each
    # (bench/results/rapid_8k_qwen_product_pooled.json, rapid_8k_product_pooled.json)
    rapid_ngram_whole_context: bool = True
    # hybrid drafter: each round the fastest so far of an n-gram draft, an LLM draft, a plain target step
    rapid_adaptive: bool = False  # measured no faster on 24-token answers (exploration does not amortize)

    model_cache: Path | None = None  # where dequantized models are cached (default: data_dir/models)

    broker_url: str | None = None
    # None: the embedded SQLite file under data_dir; postgresql://user:pass@host/db: a shared
    # PostgreSQL server (API and worker hosts then share no disk; docs/service.md)
    database_url: str | None = None
    text_cache_chars: int = 200_000_000  # parsed texts kept in memory per process for search hits
    api_key: str | None = None

    # Service and workers (docs/service.md)
    result_backend_url: str | None = None  # default: the broker URL
    query_timeout_s: float = 300.0  # POST /v1/query waits this long for a worker, then 504
    local_threads: int = 1  # embedded mode: threads per queue (ingest, qa) inside the API
    visibility_timeout_s: int = 3600  # Redis: an unacked task is re-delivered after this long
    restore_interval_s: int = 10  # Redis: how often workers sweep for abandoned tasks
    task_max_retries: int = 3  # transient failures (I/O, locked DB, broker) retried with backoff

    @property
    def db_path(self) -> Path:
        return self.data_dir / "longrag.sqlite3"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache or self.data_dir / "models"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
