"""An extractor over a copy of a registry decoder with a LoRA adapter merged in.

The product's ``cfic`` mode builds one when the server sets ``LONGRAG_CFIC_ADAPTER`` to a PEFT
adapter folder; no adapter is used by default.
"""

from __future__ import annotations

import copy
from typing import Any

from longrag.generation.packed import pack_linears, unpack_linears
from longrag.retrieval.cfic.extractor import CficExtractor
from longrag.retrieval.cfic.types import CficOptions


def load_adapter_extractor(decoder: Any, adapter_dir: str, *, options: CficOptions | None = None,
                           prefix_cache_mb: float = 1024) -> CficExtractor:
    """A :class:`CficExtractor` over a copy of a registry decoder with a LoRA adapter merged in.

    The registry's shared model is left untouched (other modes keep using it).

    Args:
        decoder: a :class:`longrag.models.registry.Decoder`.
        adapter_dir: a PEFT LoRA adapter folder (``bench/train_cfic.py`` writes one).
        options: default options of the extractor.
        prefix_cache_mb: see :class:`CficExtractor`.
    """
    from peft import PeftModel

    base = copy.deepcopy(decoder.model)
    packed = unpack_linears(base)  # PEFT rewrites plain nn.Linear layers
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()
    if packed:
        pack_linears(model)
    return CficExtractor(model, decoder.tokenizer, context_window=decoder.context_window, options=options,
                         prefix_cache_mb=prefix_cache_mb)
