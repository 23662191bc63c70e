"""REFRAG: compressed chunk embeddings fed to the decoder (arXiv 2509.01092), small faithful version.

The context is cut into chunks of ``k`` *decoder* tokens (the last chunk may be shorter). A light
encoder (the registry's sentence embedder, all-MiniLM-L6-v2) embeds each chunk's text once; a
2-layer MLP projector ``phi`` maps that vector into the decoder's token-embedding space, so each
chunk takes ONE decoder position instead of ``k``. A selective-expansion policy keeps a fraction
``p`` of chunks as raw tokens. The decoder input is

    [prefix token embeddings ; chunk slots in document order ; suffix token embeddings]

where a chunk slot is either ``phi(Enc(chunk))`` (compressed) or the chunk's own token
embeddings (expanded). Generation runs through ``inputs_embeds`` with a transformers
``DynamicCache``; the decoder architecture is unchanged.

Chunk embeddings do not depend on the question: :func:`pack_artifact` / :func:`unpack_artifact`
store them per document so a question pays only for the projector and the decoder.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from longrag.errors import LongragError
from longrag.generation.decoding import GenerationResult, TokenCallback, decode_loop, decode_one
from longrag.generation.fastkv import new_cache

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CHECKPOINT_VERSION = 1
ARTIFACT_VERSION = 1
POLICIES = ("query", "ppl", "none")


class RefragCheckpointError(LongragError):
    """A projector checkpoint that does not fit the decoder/embedder it is used with."""

    code = "refrag_checkpoint"
    http_status = 500


# -- projector and its checkpoint -----------------------------------------------------------------
@dataclass(frozen=True)
class RefragConfig:
    """What a projector was trained for; saved next to its weights."""

    decoder: str
    embedder: str
    k: int
    enc_dim: int = 384
    dec_dim: int = 576
    hidden_dim: int = 576
    version: int = CHECKPOINT_VERSION
    bag_views: int = 0  # 0: the paper's encoder vector only; n: + n learned pools of the chunk's token embeddings


class TokenBag(nn.Module):
    """Learned position-weighted pools of a chunk's own decoder token embeddings.

    Input ``(..., k, d)`` right-aligned (a short last chunk is zero-padded at the front, so the
    last positions always hold the chunk's last tokens); output ``(..., views * d)``. View 0
    starts as the mean, view ``j`` as the ``j``-th token from the end; all weights are trained.
    """

    def __init__(self, views: int, k: int) -> None:
        super().__init__()
        w = torch.zeros(views, k)
        w[0] = 1.0 / k
        for j in range(1, views):
            w[j, k - min(j, k)] = 1.0
        self.weight = nn.Parameter(w)

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        return torch.einsum("vk,...kd->...vd", self.weight.to(tok.dtype), tok).flatten(-2)


class Projector(nn.Module):
    """phi: chunk features -> decoder token-embedding space (Linear, GELU, Linear).

    The features are the encoder vector and, with ``bag_views > 0``, :class:`TokenBag` pools of
    the chunk's decoder token embeddings (computed from the chunk's ids, nearly free, so the
    cached artifact stays the encoder vectors + ids). Either way a chunk is ONE decoder slot.
    """

    def __init__(self, enc_dim: int, dec_dim: int, hidden_dim: int | None = None, *, bag_views: int = 0,
                 k: int = 16) -> None:
        super().__init__()
        hidden_dim = hidden_dim or dec_dim
        self.bag = TokenBag(bag_views, k) if bag_views > 0 else None
        in_dim = enc_dim + bag_views * dec_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dec_dim))

    def forward(self, x: torch.Tensor, tok: torch.Tensor | None = None) -> torch.Tensor:
        if self.bag is not None:
            if tok is None:
                raise ValueError("this projector also reads the chunks' token embeddings (bag_views > 0)")
            x = torch.cat([x, self.bag(tok.to(x.dtype))], dim=-1)
        return self.net(x)


def new_projector(config: RefragConfig) -> Projector:
    return Projector(config.enc_dim, config.dec_dim, config.hidden_dim, bag_views=config.bag_views, k=config.k)


def chunk_token_embeds(wte: nn.Embedding, chunks: Sequence[Sequence[int]], k: int) -> torch.Tensor:
    """``(n, k, d)`` decoder token embeddings of each chunk, right-aligned, zeros before a short chunk."""
    dev = wte.weight.device
    ids = torch.zeros(len(chunks), k, dtype=torch.long, device=dev)
    mask = torch.zeros(len(chunks), k, 1, dtype=wte.weight.dtype, device=dev)
    for i, c in enumerate(chunks):
        c = list(c)[-k:]
        if c:
            ids[i, k - len(c):] = torch.tensor(c, dtype=torch.long)
            mask[i, k - len(c):] = 1
    return wte(ids) * mask


def save_checkpoint(path: Path, projector: Projector, config: RefragConfig, meta: dict[str, Any] | None = None) -> Path:
    """Write ``{"config", "state_dict", "meta"}`` (fp16 weights, a few MB) with ``torch.save``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().cpu().contiguous() for k, v in projector.state_dict().items()}
    torch.save({"config": asdict(config), "state_dict": state, "meta": meta or {}}, path)
    return path


def _same_model(a: str, b: str) -> bool:
    return a.strip().lower().rstrip("/") == b.strip().lower().rstrip("/")


def load_checkpoint(
    path: Path, *, decoder: str | None = None, embedder: str | None = None, k: int | None = None
) -> tuple[Projector, RefragConfig, dict[str, Any]]:
    """Load a projector; refuse it when it was trained for another decoder, embedder or k.

    Raises:
        RefragCheckpointError: the file is missing/unreadable or names other models.
    """
    if not Path(path).is_file():
        raise RefragCheckpointError(f"no REFRAG projector checkpoint at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        config = RefragConfig(**blob["config"])
    except Exception as exc:  # noqa: BLE001 - any corrupt file gets the same clear error
        raise RefragCheckpointError(f"unreadable REFRAG checkpoint {path}: {exc}") from exc
    problems = []
    if decoder is not None and not _same_model(decoder, config.decoder):
        problems.append(f"it was trained for decoder {config.decoder!r} but the decoder in use is {decoder!r}")
    if embedder is not None and not _same_model(embedder, config.embedder):
        problems.append(f"it was trained for embedder {config.embedder!r} but the embedder in use is {embedder!r}")
    if k is not None and k != config.k:
        problems.append(f"it was trained for k={config.k} but k={k} was asked for")
    if problems:
        raise RefragCheckpointError(f"REFRAG checkpoint {path} does not fit: " + "; ".join(problems))
    projector = new_projector(config)
    projector.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return projector.eval(), config, dict(blob.get("meta") or {})


def checkpoint_config(path: Path) -> RefragConfig:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return RefragConfig(**blob["config"])


def find_checkpoint(decoder: str, k: int, *, weights_dir: Path = WEIGHTS_DIR) -> Path | None:
    """The bundled checkpoint for this decoder and k, if one exists."""
    for path in sorted(weights_dir.glob("refrag-*.pt")):
        try:
            cfg = checkpoint_config(path)
        except Exception:  # noqa: BLE001
            log.warning("skipping unreadable REFRAG checkpoint %s", path)
            continue
        if _same_model(cfg.decoder, decoder) and cfg.k == k:
            return path
    return None


def available_checkpoints(*, weights_dir: Path = WEIGHTS_DIR) -> list[tuple[Path, RefragConfig]]:
    out = []
    for path in sorted(weights_dir.glob("refrag-*.pt")):
        try:
            out.append((path, checkpoint_config(path)))
        except Exception:  # noqa: BLE001
            continue
    return out


# -- chunking and the encoder ----------------------------------------------------------------------
def chunk_ids(ids: Sequence[int], k: int) -> list[list[int]]:
    """Cut token ids into chunks of ``k``; the last chunk keeps the remainder (may be shorter)."""
    if k <= 0:
        raise ValueError("k must be positive")
    ids = list(ids)
    return [ids[i : i + k] for i in range(0, len(ids), k)]


@dataclass(frozen=True)
class TokenizedText:
    """A text in the decoder's tokenization, with each token's character span."""

    ids: list[int]
    offsets: list[tuple[int, int]]


def tokenize(tokenizer: Any, text: str) -> TokenizedText:
    if not text:
        return TokenizedText([], [])
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return TokenizedText(list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]])


class ChunkEncoder:
    """Enc(C_i): the sentence embedder over each chunk's text (decoded from decoder tokens).

    Args:
        embedder: a loaded ``SentenceTransformer`` (``load_embedder``).
        tokenizer: the decoder's tokenizer (chunks are cut in its tokens).
        batch_size: chunks per embedder forward pass.
    """

    def __init__(self, embedder: Any, tokenizer: Any, *, batch_size: int = 256) -> None:
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dim = int(embedder.get_embedding_dimension())

    def chunk_texts(self, chunks: Sequence[Sequence[int]]) -> list[str]:
        return self.tokenizer.batch_decode([list(c) for c in chunks], skip_special_tokens=True)

    def encode(self, chunks: Sequence[Sequence[int]]) -> np.ndarray:
        """One normalised float32 vector per chunk, shape ``(len(chunks), dim)``."""
        if not len(chunks):
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = [t if t.strip() else "." for t in self.chunk_texts(chunks)]
        vecs = self.embedder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        vec = self.embedder.encode([text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vec[0], dtype=np.float32)


# -- per-document artifact (chunk embeddings cached at ingestion) ----------------------------------
@dataclass
class ChunkArtifact:
    """A document's chunk embeddings in one decoder's tokenization."""

    k: int
    decoder: str
    embedder: str
    token_ids: np.ndarray  # int32 (n_tokens,)
    char_starts: np.ndarray  # int64 (n_chunks,) first character of each chunk
    char_ends: np.ndarray  # int64 (n_chunks,)
    embeddings: np.ndarray  # float16/32 (n_chunks, enc_dim)

    @property
    def n_chunks(self) -> int:
        return int(self.embeddings.shape[0])

    def chunks(self) -> list[list[int]]:
        return chunk_ids(self.token_ids.tolist(), self.k)


def artifact_name(k: int) -> str:
    return f"refrag-k{k}"


def build_artifact(text: str, encoder: ChunkEncoder, *, k: int, decoder: str, embedder: str) -> ChunkArtifact:
    """Tokenize ``text`` with the decoder's tokenizer, chunk it and embed every chunk."""
    tok = tokenize(encoder.tokenizer, text)
    chunks = chunk_ids(tok.ids, k)
    starts = np.array([tok.offsets[i][0] for i in range(0, len(tok.ids), k)], dtype=np.int64)
    ends = np.array([tok.offsets[min(i + k, len(tok.ids)) - 1][1] for i in range(0, len(tok.ids), k)], dtype=np.int64)
    emb = encoder.encode(chunks)
    return ChunkArtifact(k, decoder, embedder, np.asarray(tok.ids, dtype=np.int32), starts, ends, emb)


def pack_artifact(art: ChunkArtifact) -> bytes:
    """npz bytes: embeddings as float16 (half the size; cosine error ~1e-3), ids, spans, metadata."""
    meta = json.dumps({"version": ARTIFACT_VERSION, "k": art.k, "decoder": art.decoder, "embedder": art.embedder})
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(meta.encode(), dtype=np.uint8), token_ids=art.token_ids.astype(np.int32),
             char_starts=art.char_starts, char_ends=art.char_ends, embeddings=art.embeddings.astype(np.float16))
    return buf.getvalue()


def unpack_artifact(data: bytes) -> ChunkArtifact:
    with np.load(io.BytesIO(data)) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        return ChunkArtifact(int(meta["k"]), meta["decoder"], meta["embedder"], z["token_ids"], z["char_starts"],
                             z["char_ends"], z["embeddings"].astype(np.float32))


# -- selective expansion ---------------------------------------------------------------------------
def n_expanded(n_chunks: int, p: float) -> int:
    if not 0.0 <= p <= 1.0:
        raise ValueError("the expansion fraction p must be in [0, 1]")
    return min(n_chunks, int(math.floor(p * n_chunks + 0.5)))


def expand_by_query(chunk_emb: np.ndarray, query_emb: np.ndarray, p: float) -> set[int]:
    """Query-aware heuristic: expand the chunks whose embedding is most similar to the question."""
    n = n_expanded(len(chunk_emb), p)
    if n == 0:
        return set()
    sims = chunk_emb @ query_emb
    return {int(i) for i in np.argsort(-sims, kind="stable")[:n]}


@torch.inference_mode()
def chunk_log_ppl(model: Any, chunks: Sequence[Sequence[int]], *, batch: int = 64) -> np.ndarray:
    """Chunk-local mean NLL of each chunk's tokens under the decoder (chunks attend only to themselves).

    Costs one batched decoder pass over the context tokens, without cross-chunk attention.
    Chunks of one token get 0.
    """
    device = next(model.parameters()).device
    out = np.zeros(len(chunks), dtype=np.float32)
    for s in range(0, len(chunks), batch):
        part = [list(c) for c in chunks[s : s + batch]]
        width = max(len(c) for c in part)
        ids = torch.zeros((len(part), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(part), width), dtype=torch.long, device=device)
        for i, c in enumerate(part):
            ids[i, : len(c)] = torch.tensor(c)
            mask[i, : len(c)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).view(len(part), width - 1)
        m = mask[:, 1:].float()
        out[s : s + len(part)] = (nll * m).sum(1).div(m.sum(1).clamp(min=1)).cpu().numpy()
    return out


def expand_by_perplexity(model: Any, chunks: Sequence[Sequence[int]], p: float) -> set[int]:
    """Perplexity heuristic: expand the chunks the decoder finds hardest to predict."""
    n = n_expanded(len(chunks), p)
    if n == 0:
        return set()
    ppl = chunk_log_ppl(model, chunks)
    return {int(i) for i in np.argsort(-ppl, kind="stable")[:n]}


# -- decoder input ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefragLayout:
    """How the decoder input was assembled."""

    k: int
    n_chunks: int
    n_expanded: int
    context_tokens: int
    input_length: int
    prefix_tokens: int
    suffix_tokens: int

    @property
    def n_compressed(self) -> int:
        return self.n_chunks - self.n_expanded


def token_embeddings(model: Any, ids: Sequence[int]) -> torch.Tensor:
    emb = model.get_input_embeddings()
    device = emb.weight.device
    return emb(torch.tensor(list(ids), dtype=torch.long, device=device))


def build_inputs_embeds(
    model: Any,
    projector: Projector,
    chunks: Sequence[Sequence[int]],
    chunk_emb: torch.Tensor | np.ndarray,
    *,
    expand: set[int] | frozenset[int] = frozenset(),
    prefix_ids: Sequence[int] = (),
    suffix_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, RefragLayout]:
    """``[prefix ; chunk slots in order ; suffix]`` as a ``(1, T, hidden)`` tensor (differentiable)."""
    if len(chunks) != len(chunk_emb):
        raise ValueError(f"{len(chunks)} chunks but {len(chunk_emb)} chunk embeddings")
    wte = model.get_input_embeddings().weight
    pieces: list[torch.Tensor] = []
    if len(prefix_ids):
        pieces.append(token_embeddings(model, prefix_ids))
    if len(chunks):
        ce = torch.as_tensor(chunk_emb, dtype=torch.float32, device=wte.device)
        proj_dtype = next(projector.parameters()).dtype
        tok = None
        if projector.bag is not None:
            tok = chunk_token_embeds(model.get_input_embeddings(), chunks, projector.bag.weight.shape[1])
        compressed = projector(ce.to(proj_dtype), tok).to(wte.dtype)
        run: list[int] = []  # consecutive compressed chunk indices, flushed as one slice
        for i, c in enumerate(chunks):
            if i in expand:
                if run:
                    pieces.append(compressed[run[0] : run[-1] + 1])
                    run = []
                pieces.append(token_embeddings(model, c))
            else:
                run.append(i)
        if run:
            pieces.append(compressed[run[0] : run[-1] + 1])
    if len(suffix_ids):
        pieces.append(token_embeddings(model, suffix_ids))
    if not pieces:
        raise ValueError("empty decoder input: no prefix, context or suffix")
    embeds = torch.cat(pieces, dim=0).unsqueeze(0)
    k = max((len(c) for c in chunks), default=0)
    n_exp = sum(1 for i in expand if 0 <= i < len(chunks))
    layout = RefragLayout(k, len(chunks), n_exp, sum(len(c) for c in chunks), int(embeds.shape[1]),
                          len(prefix_ids), len(suffix_ids))
    return embeds, layout


# -- generation through inputs_embeds --------------------------------------------------------------
@torch.inference_mode()
def prefill_embeds(model: Any, embeds: torch.Tensor, cache: DynamicCache, *, chunk: int = 2048) -> torch.Tensor:
    """Run ``inputs_embeds`` through the model in slices filling ``cache``; return last logits."""
    logits = None
    for start in range(0, embeds.shape[1], chunk):
        out = model(inputs_embeds=embeds[:, start : start + chunk], cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
    assert logits is not None
    return logits


def generate_from_embeds(
    model: Any,
    tokenizer: Any,
    embeds: torch.Tensor,
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    on_token: TokenCallback | None = None,
    seed: int = 0,
    t0: float | None = None,
) -> GenerationResult:
    """Greedy (or sampled) generation after a ``(1, T, hidden)`` embedding prompt, with a KV cache.

    ``t0`` lets the caller start the TTFT clock earlier (e.g. before the projector ran).
    """
    device = embeds.device
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    cache = new_cache()
    t0 = time.perf_counter() if t0 is None else t0
    logits = prefill_embeds(model, embeds, cache)
    return decode_loop(
        logits, lambda token: decode_one(model, token, cache), tokenizer,
        prompt_tokens=int(embeds.shape[1]), t0=t0, max_new_tokens=max_new_tokens,
        temperature=temperature, generator=generator, on_token=on_token,
    )


@torch.inference_mode()
def continuation_log_ppl(model: Any, embeds: torch.Tensor, target_ids: Sequence[int]) -> float:
    """Mean NLL of ``target_ids`` following an embedding prompt (teacher forcing, one pass)."""
    target = torch.tensor(list(target_ids), dtype=torch.long, device=embeds.device)
    full = torch.cat([embeds[0], token_embeddings(model, target_ids[:-1])], dim=0).unsqueeze(0) if len(target) > 1 else embeds
    n_prompt = embeds.shape[1]
    logits = model(inputs_embeds=full, logits_to_keep=len(target)).logits[0].float()
    assert logits.shape[0] == len(target) and n_prompt >= 1
    return float(torch.nn.functional.cross_entropy(logits, target))


# -- a loaded REFRAG runtime -----------------------------------------------------------------------
@dataclass
class Refrag:
    """A decoder, the chunk encoder and a projector that was trained for both."""

    decoder_name: str
    model: Any
    tokenizer: Any
    encoder: ChunkEncoder
    projector: Projector
    config: RefragConfig
    checkpoint: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.config.k

    def build_artifact(self, text: str, *, k: int | None = None) -> ChunkArtifact:
        return build_artifact(text, self.encoder, k=k or self.k, decoder=self.config.decoder, embedder=self.config.embedder)

    def inputs(
        self,
        chunks: Sequence[Sequence[int]],
        chunk_emb: np.ndarray,
        *,
        expand: set[int] | frozenset[int] = frozenset(),
        prefix_ids: Sequence[int] = (),
        suffix_ids: Sequence[int] = (),
    ) -> tuple[torch.Tensor, RefragLayout]:
        with torch.inference_mode():
            return build_inputs_embeds(self.model, self.projector, chunks, chunk_emb, expand=expand,
                                       prefix_ids=prefix_ids, suffix_ids=suffix_ids)

    def select(self, policy: str, chunks: Sequence[Sequence[int]], chunk_emb: np.ndarray, p: float,
               question: str | None = None) -> set[int]:
        """Chunks to expand under ``policy`` (query | ppl | none)."""
        if policy not in POLICIES:
            raise ValueError(f"unknown REFRAG expansion policy {policy!r}; choose from {POLICIES}")
        if policy == "none" or p <= 0 or not len(chunks):
            return set()
        if policy == "query":
            if not question:
                raise ValueError("the query-aware policy needs the question")
            return expand_by_query(chunk_emb, self.encoder.encode_query(question), p)
        return expand_by_perplexity(self.model, chunks, p)


def load_refrag(
    checkpoint: Path,
    *,
    decoder_name: str | None = None,
    embedder_name: str | None = None,
    device: str | None = None,
) -> Refrag:
    """Load the projector at ``checkpoint`` and the models it names (through the registry).

    ``decoder_name``/``embedder_name`` default to the checkpoint's own; naming others raises
    :class:`RefragCheckpointError` naming both models.
    """
    from longrag.models.registry import load_decoder, load_embedder

    cfg = checkpoint_config(checkpoint) if Path(checkpoint).is_file() else None
    if cfg is None:
        raise RefragCheckpointError(f"no REFRAG projector checkpoint at {checkpoint}")
    projector, cfg, meta = load_checkpoint(checkpoint, decoder=decoder_name or cfg.decoder,
                                           embedder=embedder_name or cfg.embedder)
    dec = load_decoder(cfg.decoder, device=device)
    emb = load_embedder(cfg.embedder, device=device)
    hidden = dec.model.get_input_embeddings().weight.shape[1]
    if hidden != cfg.dec_dim:
        raise RefragCheckpointError(
            f"REFRAG checkpoint {checkpoint} projects to {cfg.dec_dim} dims, decoder {cfg.decoder!r} has {hidden}")
    dtype = dec.model.get_input_embeddings().weight.dtype
    projector = projector.to(device=dec.device, dtype=dtype)
    return Refrag(cfg.decoder, dec.model, dec.tokenizer, ChunkEncoder(emb, dec.tokenizer), projector, cfg,
                  Path(checkpoint), meta)
