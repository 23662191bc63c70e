"""Settings, read from environment variables prefixed ``LONGRAG_`` (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "longrag"


class Settings(BaseSettings):
    """All tunables of the product. Every field maps to ``LONGRAG_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="LONGRAG_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    decoder: str = "qwen2.5-coder-0.5b-instruct"
    embedder: str = "all-minilm-l6-v2"
    device: str = "auto"  # auto | cpu | cuda
    torch_threads: int = 0  # 0: leave torch's default

    max_file_bytes: int = 50 * 1024 * 1024
    chunk_tokens: int = 128  # target embedder tokens per sentence-aligned chunk
    max_sentence_chars: int = 1200  # longer "sentences" are split at whitespace

    top_k: int = 4  # chunks retrieved for the plain mode
    max_new_tokens: int = 48
    full_context_tokens: int = 0  # 0: the decoder's own window minus room for the answer

    model_cache: Path | None = None  # where dequantized models are cached (default: data_dir/models)

    broker_url: str | None = None
    api_key: str | None = None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "longrag.sqlite3"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache or self.data_dir / "models"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
