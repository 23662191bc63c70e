"""Half-precision weight twins of a decoder for one-token decoding steps on CPU (the RAPID drafter).

A decode step of a small decoder on a CPU is bound by reading its weights (SmolLM2-135M: ~540 MB of
fp32 per token). Keeping a second copy of every linear layer's weight in fp16 halves those bytes;
this CPU (AVX2, no native fp16 arithmetic) still converts them fast enough in a matrix-*vector*
product, but not in a matrix-*matrix* product (a one-off measurement with 30 SmolLM2-shaped layers: one row
46 -> 25 ms, two rows 69 -> 41 ms, four rows 97 -> 76 ms, eight rows 94 -> 140 ms, 64 rows
294 -> 1087 ms). So a :class:`HalfWeightLinear` uses the fp16 copy for inputs of at most
``max_rows`` rows (decode steps) and the original fp32 weight, shared with the source model, for
longer blocks (prefill). Activations, the KV cache, norms and embeddings stay fp32, so a twin reads
and extends the same caches as its source.

A twin is a different model (greedy next-token agreement with the fp32 source on a Frankenstein
passage, one-off: 0.996 with fp16, 0.966 with bf16): use it where any model sharing the tokenizer is
allowed, i.e. as a speculative drafter whose proposals the fp32 target verifies.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from longrag.generation.packed import PackedLinear, swap_layers

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHTS = ("fp32", *DTYPES)


class HalfWeightLinear(nn.Module):
    """An ``nn.Linear`` that multiplies short inputs by a half-precision copy of its weight.

    Args:
        linear: the source layer (an ``nn.Linear`` or a :class:`PackedLinear`); kept (weights shared,
            not copied) for inputs longer than ``max_rows`` rows.
        dtype: ``torch.float16`` or ``torch.bfloat16``.
        max_rows: most rows (tokens) computed with the half-precision copy.
    """

    def __init__(self, linear: nn.Linear | PackedLinear, dtype: torch.dtype, *, max_rows: int = 4) -> None:
        super().__init__()
        self.full = linear
        self.max_rows = max_rows
        self.register_buffer("half_weight", linear.weight.detach().to(dtype).contiguous(), persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # what callers of an nn.Linear may read
        return self.full.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > self.max_rows * x.shape[-1]:
            return self.full(x)
        y = F.linear(x.to(self.half_weight.dtype), self.half_weight).to(x.dtype)
        return y + self.full.bias if self.full.bias is not None else y


def half_weight_twin(model: nn.Module, weights: str = "fp16", *, max_rows: int = 4) -> nn.Module:
    """A twin of ``model`` whose linear layers are :class:`HalfWeightLinear` (``weights``: fp16 | bf16).

    Every parameter and buffer of ``model`` is shared, not copied; the twin adds only the
    half-precision copies of the linear weights (half the fp32 size of those layers).

    Raises:
        ValueError: ``weights`` is not ``fp16`` or ``bf16``, or the model is not fp32.
    """
    if weights not in DTYPES:
        raise ValueError(f"weights must be one of {sorted(DTYPES)}, got {weights!r}")
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("a half-weight twin needs an fp32 model")
    # parameters, buffers and packed layers (generation/packed.py) are shared with the source
    shared = itertools.chain(model.parameters(), model.buffers(),
                             (m for m in model.modules() if isinstance(m, PackedLinear)))
    memo = {id(t): t for t in shared}
    twin = copy.deepcopy(model, memo)
    swap_layers(twin, lambda m: isinstance(m, (nn.Linear, PackedLinear)),
                lambda m: HalfWeightLinear(m, DTYPES[weights], max_rows=max_rows))
    return twin.eval()


def weights_of(model: nn.Module) -> str:
    """``fp32`` / ``fp16`` / ``bf16``: the precision of ``model``'s one-token linear steps."""
    for m in model.modules():
        if isinstance(m, HalfWeightLinear):
            dtype = m.half_weight.dtype
            break
    else:
        dtype = next(model.parameters()).dtype
    return {torch.float32: "fp32", **{v: k for k, v in DTYPES.items()}}.get(dtype, str(dtype))
