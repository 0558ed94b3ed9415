"""Typed API errors and the handlers that turn every failure into a JSON body.

Expected errors: status 4xx/503/504 and `{"error": {"type": ..., "message": ...}}`.
Anything else is logged with its traceback and answered with a plain 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.errors import AdapterFileError, AdapterTableError, TaskUnavailableError, UnitransError

log = logging.getLogger("unitrans.server")


class ApiError(Exception):
    status = 400
    type = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status, type = 400, "bad_request"


class InvalidImage(ApiError):
    status, type = 400, "invalid_image"


class InvalidVideo(ApiError):
    status, type = 400, "invalid_video"


class Unauthorized(ApiError):
    status, type = 401, "unauthorized"


class NotFound(ApiError):
    status, type = 404, "not_found"


class Conflict(ApiError):
    status, type = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, type = 413, "payload_too_large"


class Unprocessable(ApiError):
    status, type = 422, "unprocessable"


class WrongTask(ApiError):
    status, type = 422, "wrong_task"


class TaskUnavailable(ApiError):
    status, type = 501, "task_unavailable"


class Overloaded(ApiError):
    status, type = 503, "overloaded"


class TableFull(ApiError):
    status, type = 503, "adapter_table_full"


class NotReady(ApiError):
    status, type = 503, "not_ready"


class Timeout(ApiError):
    status, type = 504, "timeout"


def error_body(type_: str, message: str) -> dict:
    return {"error": {"type": type_, "message": message}}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.type, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(UnitransError)
    async def _library_error(request: Request, exc: UnitransError):
        # expected errors of the model library that reached a route (most are mapped where raised)
        status, kind = {AdapterFileError: (422, "adapter_file"), AdapterTableError: (503, "adapter_table"),
                        TaskUnavailableError: (501, "task_unavailable")}.get(type(exc), (500, "model_error"))
        if status == 500:
            log.error("model library error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(kind, str(exc)), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        # the same type as the 422s routes raise themselves: one name for "the request is invalid"
        return JSONResponse(error_body(Unprocessable.type, _validation_message(exc)), status_code=Unprocessable.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return PlainTextResponse("Internal Server Error", status_code=500)
