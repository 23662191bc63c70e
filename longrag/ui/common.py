"""What every page shares: the API client, cached document texts, small display and input helpers."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import streamlit as st

from longrag.ui.client import DEFAULT_API_URL, APIError, Document, LongragClient

VIEWS = Path(__file__).parent / "views"
FILE_TYPES = ["txt", "md", "markdown", "html", "htm", "pdf", "docx", "pptx", "epub"]
DEFAULT_MODES = ["plain", "full"]


def api_url() -> str:
    """The API URL: the one typed in the sidebar, else ``LONGRAG_API_URL``, else the default."""
    return st.session_state.get("api_url") or os.environ.get("LONGRAG_API_URL") or DEFAULT_API_URL


@st.cache_resource(show_spinner=False)
def _client(url: str, api_key: str | None) -> LongragClient:
    return LongragClient(url, api_key=api_key or None)


def client() -> LongragClient:
    """One client per (URL, key) for the whole server process (httpx pools connections)."""
    return _client(api_url(), os.environ.get("LONGRAG_API_KEY"))


@st.cache_data(show_spinner=False, max_entries=16, ttl=600)
def document_text(url: str, api_key: str | None, doc_id: str) -> str:
    """A document's parsed text, cached (texts do not change for a document id)."""
    return _client(url, api_key).document_text(doc_id)


def text_of(doc_id: str) -> str:
    return document_text(api_url(), os.environ.get("LONGRAG_API_KEY"), doc_id)


def documents_or_error() -> list[Document] | None:
    """The stored documents, or ``None`` after showing why they could not be listed."""
    try:
        return client().documents()
    except APIError as exc:
        show_error(exc)
        return None


def show_error(exc: APIError) -> None:
    status = f" (HTTP {exc.status})" if exc.status else ""
    st.error(f"{exc}{status}", icon=":material/error:")


def doc_label(doc: Document) -> str:
    return f"{doc.title} · {doc.doc_id[:10]}"


def when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def parse_options(raw: str) -> dict[str, Any] | None:
    """The mode options typed as a JSON object (``None`` when blank).

    Raises:
        ValueError: When the text is not a JSON object.
    """
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"mode options are not valid JSON ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(value, dict):
        raise ValueError('mode options must be a JSON object, e.g. {"eta": 20, "tail": 0}')
    return value
