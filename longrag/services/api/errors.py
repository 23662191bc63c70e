"""Every error as JSON ``{"error": {"code", "message"}}`` with the status behind it."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from longrag.errors import LongragError


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The JSON error body every failing request gets."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def longrag_error(_: Request, exc: LongragError) -> JSONResponse:
    """A :class:`LongragError` with its own status and code."""
    return error_response(exc.http_status, exc.code, str(exc))


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 for a body FastAPI could not validate: ``malformed_json`` or ``invalid_request``."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    code = "malformed_json" if any(e.get("type") == "json_invalid" for e in exc.errors()) else "invalid_request"
    return error_response(422, code, "; ".join(parts) or "invalid request")


async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and methods: ``not_found`` / ``method_not_allowed``."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


def install_error_handlers(app: FastAPI) -> None:
    """Route every error of ``app`` through :func:`error_response`."""
    app.add_exception_handler(LongragError, longrag_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
