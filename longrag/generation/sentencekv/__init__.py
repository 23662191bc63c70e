"""SentenceKV: a sentence-level semantic KV cache for long contexts (COLM 2025, arXiv 2504.00970).

It plugs into transformers 5 without a fork of modeling code: :class:`SentenceKVCache` is a
``transformers.Cache`` whose layers hold, after the prefill, only the retained KV rows of the
prompt, and the attention function ``"sentencekv"`` (registered with ``AttentionInterface``)
reads that store whenever a forward call passes the cache as ``sentencekv=...``.

The method, one module per step:

1. :mod:`.sentences`: the prompt's token ids are cut into sentences (the buckets); generated
   tokens open and close sentences as they are decoded.
2. :mod:`.selection`: at the prefill each layer is compressed right after its attention,
   SnapKV style (the last ``window`` queries score every key, max-pooled, each KV head keeps
   its ``r * tau`` best tokens plus the ``sink`` first and ``recent`` last); the mean retained
   key of every sentence, per head, is kept. At every decode step the mean query of the open
   generated sentence ranks the sentences per KV head and the best are taken until ``tau``
   tokens are filled, plus the sink, the recent tokens and the open sentence.
3. :mod:`.store` and :mod:`.offload`: each layer's retained rows and sentence vectors; on CUDA
   the rows live in pinned host memory and the selected ones are copied in on a side stream.
4. :mod:`.cache`: the cache's bookkeeping (prefill, appended tokens, generated tokens, crop),
   the compression and the attention over the selected rows, persistence.
5. :mod:`.attention`: the registered attention function and the switch to it.
6. :mod:`.decode`: prefill / append / decode, and :class:`SentenceKVState`, a cache driven as a
   speculative-decoding target (a draft is attended position by position exactly as if fed one
   at a time; :meth:`SentenceKVCache.crop` takes rejected tokens back).

Prompts of at most ``tau + sink + recent`` tokens are not compressed (exact full KV).
"""

from longrag.generation.sentencekv.attention import (
    ATTN_NAME,
    register_attention,
    sentencekv_attention,
    sentencekv_attention_forward,
)
from longrag.generation.sentencekv.cache import SelectionStats, SentenceKVCache
from longrag.generation.sentencekv.config import (
    SUPPORTED_MODEL_TYPES,
    SentenceKVConfig,
    SentenceKVError,
    check_supported,
)
from longrag.generation.sentencekv.decode import (
    SentenceKVState,
    SKVResult,
    append,
    decode,
    feed_prompt,
    generate,
    new_cache,
    prefill,
)
from longrag.generation.sentencekv.selection import (
    POLICIES,
    SelectionPolicy,
    SentenceRanking,
    register_policy,
    sentence_keep,
    sentence_rows,
    snap_keep,
)
from longrag.generation.sentencekv.sentences import GenStep, boundary_token_ids, segment_sentences
from longrag.generation.sentencekv.store import SentenceKVLayer

__all__ = [
    "ATTN_NAME",
    "GenStep",
    "POLICIES",
    "SKVResult",
    "SUPPORTED_MODEL_TYPES",
    "SelectionPolicy",
    "SelectionStats",
    "SentenceKVCache",
    "SentenceKVConfig",
    "SentenceKVError",
    "SentenceKVLayer",
    "SentenceKVState",
    "SentenceRanking",
    "append",
    "boundary_token_ids",
    "check_supported",
    "decode",
    "feed_prompt",
    "generate",
    "new_cache",
    "prefill",
    "register_attention",
    "register_policy",
    "segment_sentences",
    "sentence_keep",
    "sentence_rows",
    "sentencekv_attention",
    "sentencekv_attention_forward",
    "snap_keep",
]
