"""RAPID: retrieval-augmented speculative decoding for long-context answers (arXiv 2502.20330).

The *target* model reads the whole long context; a *drafter* reads only a short context
retrieved from the same document and proposes up to ``gamma`` tokens, which the target checks
in one forward pass. Both keep their own KV cache (:class:`KVState`), cropped back to the
committed tokens after every verification.

The method, one module per step:

1. :mod:`.context`: the drafter's context, the best-ranked token chunks of the target's context
   within a budget, in document order (:func:`retrieve_context`).
2. :mod:`.kvstate`: a model, its cache and the tokens it holds (:class:`KVState`); what the loop
   needs of a target (:class:`TargetState`).
3. :mod:`.drafters`: LLM, n-gram (prompt lookup) and hybrid drafters (:class:`Drafter`).
4. :mod:`.draft_length`: the cost-aware draft length, learnt while decoding (:class:`DraftLength`).
5. :mod:`.verification`: the retrieval-augmented target distribution
   ``p_hat = softmax(z / T + eta * (q - p))`` and the acceptance rule (:func:`verify`);
   ``eta = 0`` is exactly standard speculative sampling.
6. :mod:`.loop`: the speculative loop (:func:`rapid_generate`) and target-only decoding
   (:func:`autoregressive`, the fallback and the baseline).

Everything here takes plain inputs (token ids, scores, callables) and imports no service code.
"""

from longrag.generation.rapid.context import (
    ChunkScorer,
    RetrievedContext,
    TokenChunk,
    context_budget,
    retrieve_context,
    select_chunks,
    token_chunks,
)
from longrag.generation.rapid.draft_length import DraftLength, LearntLengths
from longrag.generation.rapid.drafters import Draft, Drafter, HybridDrafter, LMDrafter, NgramDrafter
from longrag.generation.rapid.kvstate import KVState, TargetState, crop_to
from longrag.generation.rapid.loop import (
    RapidConfig,
    RapidResult,
    autoregressive,
    check_same_tokenizer,
    rapid_generate,
)
from longrag.generation.rapid.verification import Verdict, adjusted_logits, rejection_residual, verify

__all__ = [
    "ChunkScorer",
    "Draft",
    "DraftLength",
    "Drafter",
    "HybridDrafter",
    "KVState",
    "LMDrafter",
    "LearntLengths",
    "NgramDrafter",
    "RapidConfig",
    "RapidResult",
    "RetrievedContext",
    "TargetState",
    "TokenChunk",
    "Verdict",
    "adjusted_logits",
    "autoregressive",
    "check_same_tokenizer",
    "context_budget",
    "crop_to",
    "rapid_generate",
    "rejection_residual",
    "retrieve_context",
    "select_chunks",
    "token_chunks",
    "verify",
]
