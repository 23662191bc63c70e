"""Linear layers with pre-packed fp32 weights for CPU inference (oneDNN), same math as ``nn.Linear``.

On this 2-core AVX2 CPU a decoder's linear layers dominate every forward pass, and
``F.linear``'s BLAS call repacks the weight matrix on every call. For a block of a few rows
(speculative verification, CFIC's evidence steps) that repacking costs more than the product
itself. oneDNN can reorder a weight once into its blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``) and reuse it (``_linear_pointwise``); measured on
Qwen2.5-0.5B-shaped layers (one-off micro-benchmark; ``bench/fastkv.py`` measures whole decoders):

================  ==========  ==========  ===========
rows x layer      F.linear    packed      ratio
================  ==========  ==========  ===========
1 x 4864x896      1.58 ms     1.22 ms     1.3x
11 x 4864x896     9.15 ms     2.45 ms     3.7x
11 x lm_head      292 ms      65 ms       4.5x
512 x 4864x896    76 ms       64 ms       1.2x
================  ==========  ==========  ===========

:class:`PackedLinear` wraps an ``nn.Linear`` (weights shared, kept for autograd) and adds the
packed copy, used whenever no gradient is needed (for one-row products only with weights of
``SINGLE_ROW_MIN_BYTES`` or more). Results equal ``F.linear`` up to fp32
summation order (~1e-4 absolute on unit-scale activations).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

# For one row, oneDNN's call overhead (~0.08 ms) outweighs the repacking saved on a weight that fits
# in cache: 576x1536 (3.5 MB) 0.11 -> 0.15 ms, 4864x896 (17 MB) 1.58 -> 1.22 ms, so one-row
# products use the packed weight only from this size up.
SINGLE_ROW_MIN_BYTES = 8 << 20


def packing_available() -> bool:
    """Whether this torch build can pack linear weights (x86 builds with oneDNN)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """An ``nn.Linear`` whose inference forward uses a oneDNN pre-packed copy of its fp32 weight.

    Args:
        linear: the source layer (fp32, on CPU); kept, weights shared, for forward passes that
            need gradients and for everything that reads ``weight`` / ``bias``.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.weight.dtype != torch.float32 or linear.weight.device.type != "cpu":
            raise ValueError("PackedLinear needs an fp32 linear layer on the CPU")
        self.full = linear
        self.single_row = linear.weight.numel() * 4 >= SINGLE_ROW_MIN_BYTES
        self._lock = threading.Lock()
        self._packed: tuple[int, int, torch.Tensor] | None = None
        self._pack()

    @property
    def weight(self) -> torch.Tensor:
        return self.full.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.full.bias

    @property
    def in_features(self) -> int:
        return self.full.in_features

    @property
    def out_features(self) -> int:
        return self.full.out_features

    def _key(self) -> tuple[int, int]:
        w = self.full.weight
        return w.data_ptr(), w._version

    def _pack(self) -> torch.Tensor:
        """The packed weight, (re)built when the source weight was replaced or changed in place."""
        key = self._key()
        packed = self._packed
        if packed is None or packed[:2] != key:
            with self._lock, torch.inference_mode(False), torch.no_grad():
                packed = self._packed
                if packed is None or packed[:2] != key:
                    packed = (*key, torch.ops.mkldnn._reorder_linear_weight(self.full.weight.detach()))
                    self._packed = packed
        return packed[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if ((torch.is_grad_enabled() and (x.requires_grad or self.full.weight.requires_grad))
                or x.dtype != torch.float32 or x.device.type != "cpu" or (x.numel() == x.shape[-1] and not self.single_row)):
            return self.full(x)
        return torch.ops.mkldnn._linear_pointwise(x, self._pack(), self.full.bias, "none", [], "")

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles rebuild the packed weight
        state = self.__dict__.copy()
        state["_packed"] = None
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def swap_layers(model: nn.Module, match: Callable[[nn.Module], bool],
                make: Callable[[nn.Module], nn.Module]) -> int:
    """Replace, in place, every submodule of ``model`` that ``match`` accepts by ``make(it)``; the
    source layer inside a :class:`PackedLinear` is left alone. Returns the number replaced."""
    swaps = [(parent, name, child) for parent in model.modules() if not isinstance(parent, PackedLinear)
             for name, child in parent.named_children() if match(child)]
    for parent, name, child in swaps:
        setattr(parent, name, make(child))
    return len(swaps)


def pack_linears(model: nn.Module) -> int:
    """Replace every fp32 CPU ``nn.Linear`` of ``model`` by a :class:`PackedLinear`, in place.

    Returns the number of layers packed (0 when the build cannot pack or the model is not fp32 on
    the CPU). Layers already packed are left as they are.
    """
    if not packing_available():
        return 0
    return swap_layers(model, lambda m: type(m) is nn.Linear and m.weight.dtype == torch.float32
                       and m.weight.device.type == "cpu", PackedLinear)


def unpack_linears(model: nn.Module) -> int:
    """Put every :class:`PackedLinear` of ``model`` back to its ``nn.Linear``, in place (for code that
    rewrites linear layers, e.g. PEFT). Returns the number of layers unpacked."""
    return swap_layers(model, lambda m: isinstance(m, PackedLinear), lambda m: m.full)
