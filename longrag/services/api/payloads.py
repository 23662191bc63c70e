"""Request bodies read by hand: document uploads (a file or JSON text) and question batches.

Both accept several content types, are bounded by ``LONGRAG_MAX_FILE_BYTES`` before they are
read whole, and raise a :class:`~longrag.errors.LongragError` (413, 415 or 422) for anything
they refuse, before anything is stored.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from longrag.config import Settings
from longrag.errors import EmptyDocumentError, FileTooLargeError, InvalidRequestError, UnsupportedFileTypeError
from longrag.services.api.schemas import QueryRequest

MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around an upload


async def read_upload(request: Request, settings: Settings) -> tuple[bytes, str | None, str | None]:
    """(bytes, filename, title) of a multipart ``file`` upload or a JSON ``{"text", "title"}``."""
    limit = settings.max_file_bytes
    ctype = request.headers.get("content-type", "").lower()
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        raise FileTooLargeError(f"the upload is {length} bytes; the limit is {limit} (LONGRAG_MAX_FILE_BYTES)")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidRequestError("a multipart upload needs a file in the field 'file'")
        data = await file.read(limit + 1)
        title = form.get("title")
        filename, title = file.filename, (title if isinstance(title, str) and title.strip() else None)
    elif ctype.startswith("application/json"):
        raw = await request.body()
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequestError(f"malformed JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise InvalidRequestError('JSON uploads look like {"text": "...", "title": "..."}')
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise InvalidRequestError("title must be a string")
        data, filename = obj["text"].encode("utf-8"), None
    else:
        raise UnsupportedFileTypeError(
            f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data with a 'file' "
            'field or application/json {"text", "title"}')
    if len(data) > limit:
        raise FileTooLargeError(f"the document is over {limit} bytes (LONGRAG_MAX_FILE_BYTES)")
    if not data.strip():
        raise EmptyDocumentError("the document is empty")
    return data, filename, title


def normalise_item(item: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """One batch item (a string or an object) as a question payload, over the batch's defaults."""
    if isinstance(item, str):
        item = {"question": item}
    if not isinstance(item, dict) or not isinstance(item.get("question"), str):
        raise InvalidRequestError('each batch item is a string or an object with a "question" string')
    allowed = set(QueryRequest.model_fields) - {"stream"}
    out = {**{k: v for k, v in defaults.items() if k in allowed},
           **{k: v for k, v in item.items() if k in allowed}}
    try:
        QueryRequest(**out)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first.get("loc", ()))
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise InvalidRequestError(f"{field}: {message}") from None
    return out


async def read_batch(request: Request, settings: Settings) -> list[dict[str, Any]]:
    """The question payloads of a batch: a JSON list, ``{"questions": [...]}`` or JSONL."""
    ctype = request.headers.get("content-type", "").lower()
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_file_bytes + MULTIPART_SLACK:
        raise FileTooLargeError(f"the batch is over {settings.max_file_bytes} bytes (LONGRAG_MAX_FILE_BYTES)")
    defaults: dict[str, Any] = {}
    if ctype.startswith("application/json"):
        try:
            obj = json.loads(await request.body())
        except ValueError as exc:
            raise InvalidRequestError(f"malformed JSON: {exc}") from None
        if isinstance(obj, dict):
            defaults = {k: v for k, v in obj.items() if k != "questions"}
            obj = obj.get("questions")
        if not isinstance(obj, list):
            raise InvalidRequestError('send a JSON list of questions, or {"questions": [...]}')
        raw_items = obj
    elif ctype.startswith(("multipart/form-data", "application/x-ndjson", "application/jsonl")):
        raw_items = _jsonl_items(await _batch_bytes(request, ctype, settings))
    else:
        raise UnsupportedFileTypeError(
            f"unsupported content type {ctype or '(none)'!r}: send a JSON list, or JSONL (multipart 'file' "
            "or application/x-ndjson)")
    if not raw_items:
        raise InvalidRequestError("the batch has no questions")
    out = []
    for i, item in enumerate(raw_items):
        try:
            out.append(normalise_item(item, defaults))
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"question {i}: {exc}") from None
    return out


async def _batch_bytes(request: Request, ctype: str, settings: Settings) -> bytes:
    """The JSONL bytes of a batch: the multipart ``file`` or the whole body."""
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidRequestError("a multipart batch needs a JSONL file in the field 'file'")
        data = await file.read(settings.max_file_bytes + 1)
    else:
        data = await request.body()
    if len(data) > settings.max_file_bytes:
        raise FileTooLargeError(f"the batch is over {settings.max_file_bytes} bytes (LONGRAG_MAX_FILE_BYTES)")
    return data


def _jsonl_items(data: bytes) -> list[Any]:
    """One JSON value per non-blank line."""
    items = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as exc:
            raise InvalidRequestError(f"malformed JSON on line {n}: {exc}") from None
    return items
