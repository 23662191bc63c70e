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


SCAN_THRESHOLD = 20_000  # vectors from which CPU searches use the half-precision sharded scan


class _HalfScan:
    """A search-only copy of the vectors in float16, split into one shard per core.

    Exact float32 search over 100k x 384 reads 150 MB per query and is memory-bound (~20 ms
    on the reference 2-core CPU, whatever the thread count). Half precision halves the bytes
    and makes the scan compute-bound, so shards searched in parallel threads scale with the
    cores (7 ms there, ``bench/faiss_speed.py``). Candidates are re-scored exactly from the
    float32 store, so rounding only matters for a candidate that falls outside the shortlist.
    """

    def __init__(self, dim: int, ids: np.ndarray, vectors: np.ndarray, shards: int) -> None:
        self._shards = [
            faiss.IndexIDMap(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT))
            for _ in range(max(1, shards))
        ]
        self._index = faiss.IndexShards(dim, True, False)  # threaded; shards keep their own ids
        for sh in self._shards:
            self._index.add_shard(sh)
        self.add(ids, vectors)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        n = len(self._shards)
        for i, sh in enumerate(self._shards):  # every batch is spread over all shards
            if len(ids[i::n]):
                sh.add_with_ids(np.ascontiguousarray(vectors[i::n]), np.ascontiguousarray(ids[i::n]))

    def remove(self, ids: np.ndarray) -> None:
        for sh in self._shards:
            sh.remove_ids(faiss.IDSelectorBatch(ids))

    def candidates(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self._index.search(queries, k)[1]


class VectorIndex:
    """Cosine search over L2-normalised vectors with add / remove / save / load.

    The CPU index (``IndexIDMap2(IndexFlatIP)``) is the persisted source and answers exactly.
    From ``scan_threshold`` vectors on, CPU searches without a filter shortlist candidates in a
    float16 copy sharded over the cores and re-score them exactly (:class:`_HalfScan`). When
    CUDA and faiss-gpu are present, searches run on a GPU copy that is refreshed after each change.
    """

    def __init__(self, dim: int, *, use_gpu: bool | None = None, scan_threshold: int = SCAN_THRESHOLD) -> None:
        self.dim = dim
        self._cpu = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._gpu = None
        self._gpu_res = None
        self.scan_threshold = scan_threshold
        self._scan: _HalfScan | None = None

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
            if self._scan is not None:
                self._scan.add(ids, vectors)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        removed = int(self._cpu.remove_ids(faiss.IDSelectorBatch(ids)))
        self._gpu = None
        if self._scan is not None:
            self._scan.remove(ids)
        return removed

    def _half_scan(self) -> _HalfScan | None:
        if self._use_gpu or self.ntotal < self.scan_threshold:
            return None
        if self._scan is None:
            vectors = self._cpu.index.reconstruct_n(0, self.ntotal)
            self._scan = _HalfScan(self.dim, self.ids(), vectors, faiss.omp_get_max_threads())
        return self._scan

    def _rescored(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.finfo(np.float32).max, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (q, cand) in enumerate(zip(queries, candidates)):
            cand = cand[cand >= 0]
            exact = self._cpu.reconstruct_batch(cand) @ q
            top = np.argsort(-exact, kind="stable")[:k]
            scores[row, : len(top)], ids[row, : len(top)] = exact[top], cand[top]
        return scores, ids

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
            scan = self._half_scan()
            if scan is not None:
                return self._rescored(queries, scan.candidates(queries, min(self.ntotal, 2 * k + 10)), k)
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
