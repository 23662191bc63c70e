"""Settings, read from environment variables prefixed ``LONGRAG_`` (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from longrag.errors import ConfigError

# The choices of each choice-valued setting (tests/test_config.py checks them against the code
# that reads each one).
EmbedBackend = Literal["auto", "torch", "onnx", "onnx-int8"]
Device = Literal["auto", "cpu", "cuda"]
Retriever = Literal["chunk", "situated", "bm25", "hybrid"]
SituatedStrategy = Literal["residual", "late", "trained"]
SituatedContext = Literal["pool", "encode"]
SentenceKVRetention = Literal["sentence", "token"]
RefragPolicy = Literal["query", "ppl", "none"]
DrafterWeights = Literal["fp16", "bf16", "fp32"]
DrafterKind = Literal["llm", "hybrid", "ngram"]
DraftLengthPolicy = Literal["cost", "fixed"]


class SituatedSettings(BaseModel):
    """Situated embeddings (docs/situated.md): ``LONGRAG_SITUATED_<NAME>``."""

    model_config = ConfigDict(extra="ignore")

    strategy: SituatedStrategy = "residual"
    context: SituatedContext = "pool"  # residual context vector: pool (neighbours' vectors) | encode
    window: int = Field(2, ge=0)  # neighbouring chunks on each side in the context window
    lead: int = Field(1, ge=0)  # the document's first chunks join every chunk's context
    alpha: float = 0.5  # residual: s = normalize(c + alpha * context)
    beta: float = Field(0.5, ge=0)  # score = sim(q, s) + beta * sim(q, c)
    # late chunking window (word pieces); over twice the 64-token overlap of consecutive windows
    late_max_tokens: int = Field(256, ge=130)
    weights: Path | None = None  # trained adapter (default: the bundled one)


class SentenceKVSettings(BaseModel):
    """SentenceKV (docs/sentencekv.md): ``LONGRAG_SENTENCEKV_<NAME>``; defaults from the paper
    (tau = 1024, r = 2, 32 sink / recent) except the prefill retention."""

    model_config = ConfigDict(extra="ignore")

    budget: int = Field(1024, ge=1)  # tau: tokens selected by sentence ranking per decode step
    ratio: float = Field(2.0, ge=1)  # r: the prefill retains r * tau tokens per KV head
    sink: int = Field(32, ge=0)
    recent: int = Field(32, ge=1)
    max_sentence: int = Field(64, ge=1)  # longer sentences are cut into buckets of this many tokens
    # prefill retention: sentence (whole sentences: matched full KV on 12 needles at 8k, bench/results/sentencekv_needles.json)
    # or token (SnapKV top tokens per head, the paper: missed every needle there)
    retention: SentenceKVRetention = "sentence"
    min_context: int = Field(4096, ge=0)  # `full` mode uses SentenceKV above this many context tokens
    doc_cache: bool = True  # persist each document's compressed cache for later questions
    at_ingest: bool = False  # build that cache at ingestion (ingest hook) instead of 1st question


class RefragSettings(BaseModel):
    """REFRAG (docs/refrag.md), compressed chunk embeddings in the decoder: ``LONGRAG_REFRAG_<NAME>``."""

    model_config = ConfigDict(extra="ignore")

    k: int = Field(16, ge=1)  # decoder tokens per compressed chunk (8 | 16 | 32; a projector must exist)
    p: float = Field(0.1, ge=0, le=1)  # fraction of chunks expanded back to raw tokens
    policy: RefragPolicy = "query"  # query (most similar to the question) | ppl (highest perplexity) | none
    max_chunks: int = Field(256, ge=1)  # context taken around the best hit, in chunks (256 x 16 = 4096 tokens)
    weights: Path | None = None  # projector checkpoint (default: the bundled one for the decoder and k)
    at_ingest: bool = True  # once the refrag mode is loaded, compute chunk embeddings at ingestion


class RapidSettings(BaseModel):
    """RAPID (docs/rapid.md), retrieval-augmented speculative decoding, mode ``rapid``:
    ``LONGRAG_RAPID_<NAME>``."""

    model_config = ConfigDict(extra="ignore")

    drafter: str | None = None  # drafter decoder (registry name / path); None: the target's own weights
    # drafter weights: fp16 keeps a half-precision copy of the linear weights for one-token steps
    # (fp32 weights still serve prefill blocks; measured faster at 8k: bench/rapid.py) | bf16 | fp32
    drafter_weights: DrafterWeights = "fp16"
    drafter_kind: DrafterKind = "hybrid"  # llm | hybrid (n-gram lookup in the retrieved context, else llm) | ngram
    gamma: int = Field(10, ge=1)  # most tokens drafted per verification
    eta: float = Field(0.0, ge=0, allow_inf_nan=False)  # knowledge transfer strength (0 = lossless speculative decoding)
    temperature: float = Field(0.0, ge=0, allow_inf_nan=False)  # 0 = greedy
    tail: float = Field(0.1, ge=0, le=1)  # eta's shift skips tokens whose target probability is under tail * max (paper: 0.1)
    consensus: bool = False  # a draft token the plain target accepts is kept at any eta (no effect at eta 0)
    # greedy, eta > 0: a rejected draft token is replaced by the argmax of the rejection residual
    # max(p - p_hat, p - q, 0), not of p_hat (no third token only the shift ranks first; docs/rapid.md)
    residual: bool = False
    chunk_tokens: int = Field(512, ge=1)  # drafter retrieval unit, decoder tokens, no overlap
    budget_tokens: int = Field(1024, ge=1)  # drafter context = max(this, s / 24) tokens (paper: 4096 at 128K)
    threshold: float = 0.3  # chunks whose dense cosine is under this are dropped (the retriever orders the rest)
    min_confidence: float = Field(0.3, ge=0, le=1)  # stop drafting when the drafter's next-token probability is lower
    max_ngram: int = Field(3, ge=1)  # hybrid / ngram drafter: longest n-gram looked up
    # shortest n-gram match drafted from, <= rapid_max_ngram (2 measured slower at 8k: bench/rapid.py)
    min_ngram: int = Field(1, ge=1)
    # hybrid / ngram drafter: draft length, "cost" (the length with the most expected tokens per unit of
    # drafting + verification cost, all learnt while decoding, 0 = a plain target step; n-gram drafts,
    # and the hybrid's LLM drafts: generation/rapid/draft_length.py DraftLength) | "fixed" (n-gram: as long as the
    # match, LLM: up to gamma with the confidence stop)
    draft_length: DraftLengthPolicy = "cost"
    verify_slope: float = Field(0.15, ge=0)  # DraftLength's prior: extra verification cost per drafted token, in steps
    # cost-aware lengths: start each answer from the estimates the previous answer learnt (same models,
    # drafter, context size; per process) instead of the priors
    warm_start: bool = True
    # hybrid / ngram drafter: draft from a match only when this share of the n-gram's occurrences continue alike
    ngram_min_agreement: float = Field(0.5, ge=0, le=1)
    # hybrid / ngram drafter: look n-grams up in the target's whole context when the retrieved one has none
    # (before the LLM drafter); measured faster at 8k on both decoders over 18 questions each
    # (bench/results/rapid_8k_qwen_product_pooled.json, rapid_8k_product_pooled.json)
    ngram_whole_context: bool = True

    @model_validator(mode="after")
    def _ngram_range(self) -> RapidSettings:
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"LONGRAG_RAPID_MIN_NGRAM ({self.min_ngram}) must be <= "
                             f"LONGRAG_RAPID_MAX_NGRAM ({self.max_ngram})")
        return self


class CficSettings(BaseModel):
    """CFIC evidence extraction (docs/cfic.md): ``LONGRAG_CFIC_<NAME>``; a question may set the
    keys of ``QUESTION_OPTIONS`` in ``longrag/services/modes/cfic.py`` through its options."""

    model_config = ConfigDict(extra="ignore")

    extractor: str | None = None  # registry decoder that extracts (None: the pipeline's decoder)
    adapter: str | None = None  # LoRA adapter folder merged into a copy of the extractor
    top_k: int = Field(3, ge=1)
    # likelihood over the retriever's best score_candidates sentences: on short-sentence documents
    # (bench/situated_dev_docs.json) evidence hit@3 0.783 against 0.522 for prefix decoding
    method: Literal["prefix", "likelihood"] = "likelihood"
    max_span_sentences: int = Field(4, ge=1)
    max_span_words: int = Field(256, ge=1)
    no_evidence_threshold: float = 0.5  # >= 1: never "no evidence"
    doc_tokens: int | None = Field(None, ge=1)  # document tokens shown (None: the model's window)
    regions: int = Field(4, ge=1)
    score_candidates: int = Field(16, ge=0)  # likelihood: sentences scored, in retrieval order (0: every one shown)
    batch_size: int = Field(4, ge=1)
    prefix_cache_mb: float = Field(1024, ge=0)  # KV of recently read documents, reused by later questions (0: off)


TECHNIQUES: dict[str, type[BaseModel]] = {
    "situated": SituatedSettings, "sentencekv": SentenceKVSettings, "refrag": RefragSettings, "rapid": RapidSettings,
    "cfic": CficSettings,
}


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "longrag"


class Settings(BaseSettings):
    """All tunables of the product. Every field maps to ``LONGRAG_<NAME>``.

    Choices and ranges are typed, so a bad value fails here (pydantic's ``ValidationError``;
    :func:`get_settings` turns it into a one-line :class:`~longrag.errors.ConfigError`), not in
    the code that reads the setting later.
    """

    model_config = SettingsConfigDict(env_prefix="LONGRAG_", extra="ignore", env_nested_delimiter="_",
                                      env_nested_max_split=1)

    data_dir: Path = Field(default_factory=_default_data_dir)
    decoder: str = "qwen2.5-coder-0.5b-instruct"
    embedder: str = "all-minilm-l6-v2"
    # How the embedder runs: torch (SentenceTransformer.encode) | onnx | onnx-int8 (onnxruntime,
    # exported once into the model cache) | auto (= onnx on CPU, torch on CUDA: bench/embed_speed.py
    # measured the fused fp32 ONNX export faster than plain encode; see docs/results-core.md).
    embed_backend: EmbedBackend = "auto"
    device: Device = "auto"  # auto: CUDA when present
    torch_threads: int = Field(0, ge=0)  # 0: leave torch's default
    # CPU decoders multiply by oneDNN pre-packed copies of their fp32 linear weights (one more copy
    # of those weights in memory; generation/packed.py): short blocks (verification, CFIC steps)
    # ~2x faster on Qwen, prefill 0-11% (bench/fastkv.py)
    packed_weights: bool = True

    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1)
    chunk_tokens: int = Field(128, ge=1)  # target embedder tokens per sentence-aligned chunk
    max_sentence_chars: int = Field(1200, ge=1)  # longer "sentences" are split at whitespace

    top_k: int = Field(4, ge=1)  # chunks retrieved for the plain mode with context_unit=chunk
    # Plain mode context (docs/answers.md): window = sentence windows around the best sentences of the
    # top window_pool chunks (measured better than whole chunks on bench/books.py) | chunk = top_k chunks
    context_unit: Literal["window", "chunk"] = "window"
    window_pool: int = Field(24, ge=1)
    window_top: int = Field(12, ge=1)
    window_radius: int = Field(1, ge=0)
    # Answer checks (docs/answers.md): an answer that only repeats the question, or whose words are not in
    # the context, is decoded again with its first token excluded, up to answer_tries answers
    answer_checks: bool = True
    answer_tries: int = Field(3, ge=1)
    max_question_chars: int = Field(2000, ge=1)  # a longer question (a long quoted passage) is refused with a clear error

    # Retrieval (docs/situated.md): default retriever and situated-embedding options
    retriever: Retriever = "hybrid"  # best measured: bench/situated.py
    rrf_k: int = Field(60, ge=0)  # hybrid: reciprocal rank fusion constant
    # Title-link hop (docs/situated.md): the first link_hop hits are read for titles of other
    # documents, whose first chunks go right after the best link_keep hits; 0 = off.
    # Picked on HotpotQA questions outside the evaluation set (bench/links_dev.py).
    link_hop: int = Field(5, ge=0)
    link_keep: int = Field(2, ge=0)
    max_new_tokens: int = Field(48, ge=1)
    full_context_tokens: int = Field(0, ge=0)  # 0: the decoder's own window minus room for the answer

    # One model per technique; LONGRAG_<TECHNIQUE>_<NAME> sets <technique>.<name>
    situated: SituatedSettings = Field(default_factory=SituatedSettings)
    sentencekv: SentenceKVSettings = Field(default_factory=SentenceKVSettings)
    refrag: RefragSettings = Field(default_factory=RefragSettings)
    rapid: RapidSettings = Field(default_factory=RapidSettings)
    cfic: CficSettings = Field(default_factory=CficSettings)

    model_cache: Path | None = None  # where dequantized models are cached (default: data_dir/models)

    broker_url: str | None = None
    # None: the embedded SQLite file under data_dir; postgresql://user:pass@host/db: a shared
    # PostgreSQL server (API and worker hosts then share no disk; docs/service.md)
    database_url: str | None = None
    text_cache_chars: int = Field(200_000_000, ge=0)  # parsed texts kept in memory per process for search hits
    api_key: str | None = None

    # Service and workers (docs/service.md)
    result_backend_url: str | None = None  # default: the broker URL
    query_timeout_s: float = Field(300.0, gt=0)  # POST /v1/query waits this long for a worker, then 504
    local_threads: int = Field(1, ge=1)  # embedded mode: threads per queue (ingest, qa) inside the API
    visibility_timeout_s: int = Field(3600, ge=1)  # Redis: an unacked task is re-delivered after this long
    restore_interval_s: int = Field(10, ge=1)  # Redis: how often workers sweep for abandoned tasks
    task_max_retries: int = Field(3, ge=0)  # transient failures (I/O, locked DB, broker) retried with backoff

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """Keyword arguments may use the flat names of the environment (``rapid_gamma=4`` for
        ``rapid={"gamma": 4}``), as ``--set`` and scripts do."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in [k for k in data if isinstance(k, str)]:
            group, _, name = key.partition("_")
            model = TECHNIQUES.get(group)
            if model is not None and name in model.model_fields:
                current = data.get(group) or {}
                if isinstance(current, BaseModel):
                    current = current.model_dump(exclude_unset=True)
                data[group] = {**current, name: data.pop(key)}
        return data

    @property
    def db_path(self) -> Path:
        return self.data_dir / "longrag.sqlite3"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache or self.data_dir / "models"


def settings_error(exc: ValidationError, prefix: str = "LONGRAG_") -> ConfigError:
    """One line naming each bad setting by its environment variable (``prefix`` + field name)."""
    problems = []
    for err in exc.errors():
        name = "_".join(str(part) for part in err["loc"]).upper()
        var = f"{prefix}{name}: " if name else ""
        value = f" (got {err['input']!r})" if name and "input" in err else ""
        problems.append(f"{var}{err['msg'].removeprefix('Value error, ')}{value}")
    return ConfigError("invalid settings: " + "; ".join(problems))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (from the environment, read once).

    Raises:
        ConfigError: a ``LONGRAG_*`` variable holds a value the setting does not accept.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise settings_error(exc) from None
