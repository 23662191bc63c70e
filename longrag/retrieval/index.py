"""A persisted FAISS inner-product index keyed by int64 ids (GPU when available)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorIndex:
    """Exact cosine search over L2-normalised vectors with add / remove / save / load.

    The CPU index (``IndexIDMap2(IndexFlatIP)``) is the persisted source; when CUDA and
    faiss-gpu are present, searches run on a GPU copy that is refreshed after each change.
    """

    def __init__(self, dim: int, *, use_gpu: bool | None = None) -> None:
        self.dim = dim
        self._cpu = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._gpu = None
        self._gpu_res = None

    @property
    def ntotal(self) -> int:
        return int(self._cpu.ntotal)

    @property
    def on_gpu(self) -> bool:
        return self._use_gpu

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._cpu.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        if len(ids):
            self._cpu.add_with_ids(vectors, ids)
            self._gpu = None

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        removed = int(self._cpu.remove_ids(faiss.IDSelectorBatch(ids)))
        self._gpu = None
        return removed

    def _search_index(self):
        if not self._use_gpu:
            return self._cpu
        if self._gpu is None:
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._cpu)
        return self._gpu

    def search(
        self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query; ids are -1 where fewer than ``k`` exist."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        if self.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if allowed_ids is None:
            return self._search_index().search(queries, k)
        allowed_ids = np.ascontiguousarray(allowed_ids, dtype=np.int64)
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed_ids))
        return self._cpu.search(queries, min(k, len(allowed_ids)) or 1, params=params)

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename) so a crash never leaves a torn index."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        faiss.write_index(self._cpu, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, dim: int, *, use_gpu: bool | None = None) -> VectorIndex:
        index = cls(dim, use_gpu=use_gpu)
        loaded = faiss.read_index(str(path))
        if loaded.d != dim:
            raise ValueError(f"index at {path} has dimension {loaded.d}, expected {dim}")
        index._cpu = loaded
        return index
