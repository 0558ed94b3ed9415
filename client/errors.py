"""Typed errors of the unitrans client, one per kind of server answer.

Every error carries `.status` (HTTP status, 0 when no answer came), `.type` (the
server's error type, e.g. "wrong_task") and `.message`. `OverloadedError` also has
`.retry_after` (seconds) from the server's Retry-After header.
"""

from __future__ import annotations


class UnitransError(Exception):
    status = 0

    def __init__(self, message: str, *, status: int = 0, type: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.type = type
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}" if self.status else self.message


class ConnectionFailed(UnitransError):
    """No HTTP answer: server down, refused, or the client's timeout passed."""


class BadRequestError(UnitransError):
    """400: the request could not be read (bad JSON, bad base64, not an image...)."""
    status = 400


class AuthenticationError(UnitransError):
    status = 401


class NotFoundError(UnitransError):
    """404: unknown adapter, gallery or route."""
    status = 404


class ConflictError(UnitransError):
    status = 409


class PayloadTooLargeError(UnitransError):
    """413: image or body over the server's limits (decompression bombs included)."""
    status = 413


class ValidationError(UnitransError):
    """422: well-formed but invalid (missing field, out of range, adapter of another task...)."""
    status = 422


class ServerError(UnitransError):
    """5xx other than 503/504: a bug on the server; its log has the traceback."""
    status = 500


class TaskUnavailableError(ServerError):
    """501: the server's backbone lacks the parts this task needs."""
    status = 501


class OverloadedError(UnitransError):
    """503: queue full (or still loading); retry after `.retry_after` seconds."""
    status = 503


class TimeoutError(UnitransError):  # noqa: A001 - the client's own, distinct from builtins.TimeoutError
    """504: the request waited longer than the server's per-request timeout."""
    status = 504


BY_STATUS = {400: BadRequestError, 401: AuthenticationError, 404: NotFoundError, 409: ConflictError,
             413: PayloadTooLargeError, 422: ValidationError, 501: TaskUnavailableError, 503: OverloadedError,
             504: TimeoutError}


def from_response(status: int, body, headers) -> UnitransError:
    err = body.get("error") if isinstance(body, dict) else None
    message = err.get("message", "") if isinstance(err, dict) else (body if isinstance(body, str) else "")
    kind = err.get("type", "") if isinstance(err, dict) else ""
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else UnitransError)
    retry = headers.get("retry-after")
    try:
        retry_after = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    return cls(message or f"HTTP {status}", status=status, type=kind, retry_after=retry_after)
