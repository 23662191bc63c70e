"""Per-process singletons: one corpus and one QA pipeline per data directory."""

from __future__ import annotations

import logging
import threading

from longrag.config import Settings, get_settings
from typing import TYPE_CHECKING

from longrag.services.corpus import Corpus

if TYPE_CHECKING:  # the QA pipeline imports torch: only load it when a question comes
    from longrag.services.qa import QAPipeline

_lock = threading.Lock()
_corpus: dict[str, Corpus] = {}
_pipelines: dict[str, "QAPipeline"] = {}


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "sentence_transformers", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def apply_torch_settings(settings: Settings) -> None:
    if settings.torch_threads > 0:
        import torch

        torch.set_num_threads(settings.torch_threads)


def get_corpus(settings: Settings | None = None) -> Corpus:
    settings = settings or get_settings()
    key = str(settings.data_dir)
    with _lock:
        if key not in _corpus:
            apply_torch_settings(settings)
            _corpus[key] = Corpus(settings=settings)
        return _corpus[key]


def get_pipeline(settings: Settings | None = None) -> "QAPipeline":
    from longrag.services.qa import QAPipeline

    settings = settings or get_settings()
    corpus = get_corpus(settings)
    key = str(settings.data_dir)
    with _lock:
        if key not in _pipelines:
            _pipelines[key] = QAPipeline(corpus, settings=settings)
        return _pipelines[key]
