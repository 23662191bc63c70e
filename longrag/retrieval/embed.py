"""Text -> normalised float32 vectors, on top of a sentence-transformers model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Embedder:
    """Encodes texts with a loaded SentenceTransformer; counts tokens with its tokenizer.

    Args:
        model: a ``SentenceTransformer`` (from :func:`longrag.models.registry.load_embedder`).
        batch_size: texts per forward pass.
    """

    def __init__(self, model: Any, *, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self.dim = int(model.get_embedding_dimension())
        self.max_tokens = int(model.max_seq_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word-piece counts without special tokens (no truncation)."""
        if not len(texts):
            return []
        enc = self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in enc]
