"""Byte-bounded LRU of prompt-head KV caches, so a document is read once for many questions."""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

from transformers import DynamicCache


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes held by a KV cache's key and value storage (a growing cache's headroom included)."""
    return sum(t.untyped_storage().nbytes() for layer in cache.layers
               for t in (layer.keys, layer.values) if t is not None)


class PrefixKVCache:
    """LRU of prompt-head KV caches, bounded by bytes (one per document view, per extractor).

    A service asks many questions about one document: the head of CFIC's prompt (instructions +
    document) is then prefilled once and every later question only prefills its own tail.
    ``get`` returns a private copy, so concurrent questions never share a mutable cache.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[str, tuple[DynamicCache, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.used = 0

    @staticmethod
    def key(ids: Sequence[int]) -> str:
        return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()

    def get(self, ids: Sequence[int]) -> DynamicCache | None:
        """A private copy of the cache stored for these head ids (None when absent)."""
        k = self.key(ids)
        with self._lock:
            item = self._items.get(k)
            if item is None:
                return None
            self._items.move_to_end(k)
            return copy.deepcopy(item[0])

    def put(self, ids: Sequence[int], cache: DynamicCache) -> None:
        """Store a copy of ``cache`` for these head ids, evicting the least recently used."""
        size = cache_bytes(cache)
        if size > self.max_bytes:
            return
        k = self.key(ids)
        stored = copy.deepcopy(cache)
        with self._lock:
            if k in self._items:
                self.used -= self._items.pop(k)[1]
            self._items[k] = (stored, size)
            self.used += size
            while self.used > self.max_bytes and self._items:
                self.used -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)
