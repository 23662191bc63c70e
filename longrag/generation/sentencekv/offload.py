"""Where the retained KV lives and how the selected rows reach the compute device.

On CUDA (with ``offload``) the retained rows live in pinned host memory and the sentence
vectors on the GPU; each decode step gathers the selected rows on the host and copies them in
on a side stream, the K copy overlapping the V gather. This CUDA path is written but untested
here (no GPU). On CPU the store is in RAM and the rows are gathered in place.
"""

from __future__ import annotations

import torch


def store_placement(device: torch.device, *, offload: bool) -> tuple[torch.device, bool]:
    """``(store device, pinned)`` for the retained rows of a model running on ``device``."""
    store_dev = torch.device("cpu") if (offload and device.type == "cuda") else device
    return store_dev, store_dev.type == "cpu" and device.type == "cuda"


def empty_store(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, pinned: bool) -> torch.Tensor:
    """An uninitialised store tensor (in pinned host memory when ``pinned``)."""
    if pinned:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    return torch.empty(shape, dtype=dtype, device=device)


class RowGather:
    """Gathers selected rows of a layer's ``[H, capacity, D]`` key and value stores."""

    def __init__(self) -> None:
        self._copy_stream: torch.cuda.Stream | None = None

    def __call__(self, keys: torch.Tensor, values: torch.Tensor, idx: torch.Tensor,
                 dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx [..., H, w]`` of each head's store -> keys, values ``[..., H, w, D]`` on ``dev``."""
        h = keys.shape[0]
        d = keys.shape[-1]
        cap = keys.shape[1]
        shape = (*idx.shape, d)
        flat = (idx + torch.arange(h, device=idx.device)[:, None] * cap).reshape(-1)
        if keys.device == dev:  # row gathers (index_select) are much cheaper than gather
            kg = keys.view(h * cap, d).index_select(0, flat).view(shape)
            vg = values.view(h * cap, d).index_select(0, flat).view(shape)
            return kg, vg
        # the store in pinned host memory: gather on the host into pinned buffers, copy K in on
        # a side stream while V is gathered
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device=dev)
        flat = flat.cpu()
        kh = torch.empty((flat.numel(), d), dtype=keys.dtype, pin_memory=True)
        torch.index_select(keys.view(h * cap, d), 0, flat, out=kh)
        with torch.cuda.stream(self._copy_stream):
            kg = kh.view(shape).to(dev, non_blocking=True)
        vh = torch.empty((flat.numel(), d), dtype=values.dtype, pin_memory=True)
        torch.index_select(values.view(h * cap, d), 0, flat, out=vh)
        vg = vh.view(shape).to(dev, non_blocking=True)
        torch.cuda.current_stream(dev).wait_stream(self._copy_stream)
        kg.record_stream(torch.cuda.current_stream(dev))
        return kg, vg
