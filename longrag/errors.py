"""User-facing errors. Each carries a stable ``code`` that the CLI and REST layers map."""

from __future__ import annotations


class LongragError(Exception):
    """Base class: a clear message for a user, never a traceback."""

    code = "error"
    http_status = 400


class EmptyDocumentError(LongragError):
    code = "empty_document"
    http_status = 422


class UnsupportedFileTypeError(LongragError):
    code = "unsupported_type"
    http_status = 415


class DecodeError(LongragError):
    code = "undecodable"
    http_status = 422


class FileTooLargeError(LongragError):
    code = "too_large"
    http_status = 413


class NotFoundError(LongragError):
    code = "not_found"
    http_status = 404


class InvalidRequestError(LongragError):
    code = "invalid_request"
    http_status = 422


class ConfigError(LongragError):
    """A ``LONGRAG_*`` environment variable holds a value its setting does not accept."""

    code = "config_error"
    http_status = 500


class ModelIntegrityError(LongragError):
    code = "model_integrity"
    http_status = 500


# -- service (REST API / workers) ---------------------------------------------------------------
class ServiceTimeoutError(LongragError):
    code = "timeout"
    http_status = 504


class NotReadyError(LongragError):
    code = "not_ready"
    http_status = 409


class JobFinishedError(LongragError):
    """A change asked of a job that has already ended (cancelling a finished job)."""

    code = "job_finished"
    http_status = 409


class UnauthorizedError(LongragError):
    code = "unauthorized"
    http_status = 401


class WorkerError(LongragError):
    code = "worker_error"
    http_status = 500


class DatabaseError(LongragError):
    """The database cannot be used: unreachable, wrong credentials, or a schema this version
    does not know."""

    code = "database_error"
    http_status = 503
