"""VectorIndex: exact answers, consistent add / remove / save / load, the sharded half-precision scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from longrag.retrieval.index import VectorIndex


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return np.arange(3000, dtype=np.int64) * 3 + 5, _unit(rng, 3000, 48), _unit(rng, 40, 48)


def _brute(ids: np.ndarray, vecs: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries @ vecs.T), axis=1, kind="stable")[:, :k]]


def test_exact_search_add_remove(data):
    ids, vecs, queries = data
    index = VectorIndex(48, use_gpu=False)
    index.add(ids, vecs)
    gone = ids[::2]
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0  # already removed
    keep = ~np.isin(ids, gone)
    _, got = index.search(queries, 10)
    np.testing.assert_array_equal(got, _brute(ids[keep], vecs[keep], queries, 10))
    assert sorted(index.ids()) == sorted(ids[keep])


def test_half_scan_matches_exact_through_changes(data):
    ids, vecs, queries = data
    exact = VectorIndex(48, use_gpu=False, scan_threshold=10**9)
    scan = VectorIndex(48, use_gpu=False, scan_threshold=1000)
    for index in (exact, scan):
        index.add(ids[:2000], vecs[:2000])
        index.search(queries[:1], 5)  # builds the scan copy on the second index
        index.add(ids[2000:], vecs[2000:])  # mirrored into it
        index.remove(ids[100:400])
    assert scan._scan is not None and exact._scan is None
    s_exact, i_exact = exact.search(queries, 10)
    s_scan, i_scan = scan.search(queries, 10)
    np.testing.assert_array_equal(i_scan, i_exact)
    np.testing.assert_allclose(s_scan, s_exact, atol=1e-5)  # re-scored in float32
    assert not np.isin(i_scan, ids[100:400]).any()  # removed vectors never come back
    # a document filter still answers exactly from the float32 store
    allowed = ids[2500:2600]
    _, got = scan.search(queries, 5, allowed_ids=allowed)
    np.testing.assert_array_equal(got, _brute(ids[2500:2600], vecs[2500:2600], queries, 5))


def test_save_load_round_trip(data, tmp_path: Path):
    ids, vecs, queries = data
    index = VectorIndex(48, use_gpu=False, scan_threshold=1000)
    index.add(ids, vecs)
    before = index.search(queries, 10)
    index.save(tmp_path / "chunk.faiss")
    loaded = VectorIndex.load(tmp_path / "chunk.faiss", 48, use_gpu=False)
    assert loaded.ntotal == len(ids)
    after = loaded.search(queries, 10)
    np.testing.assert_array_equal(after[1], before[1])
    with pytest.raises(ValueError, match="dimension"):
        VectorIndex.load(tmp_path / "chunk.faiss", 32, use_gpu=False)


def test_empty_and_small(data):
    ids, vecs, queries = data
    index = VectorIndex(48, use_gpu=False)
    scores, got = index.search(queries[:2], 5)
    assert got.shape == (2, 0)
    index.add(ids[:3], vecs[:3])
    _, got = index.search(queries[:1], 10)  # k larger than the index
    assert sorted(got[0]) == sorted(ids[:3])
    with pytest.raises(ValueError):
        index.add(ids[:2], vecs[:3])
