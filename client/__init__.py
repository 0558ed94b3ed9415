"""unitrans HTTP client: `Client` (sync), `AsyncClient`, typed errors; CLI: `python -m client --help`.
Imports nothing of the server's: copy this package next to any program that calls a unitrans server."""

from client.api import AsyncClient, Client
from client.errors import (AuthenticationError, BadRequestError, ConflictError, ConnectionFailed, NotFoundError,
                           OverloadedError, PayloadTooLargeError, ServerError, TaskUnavailableError, TimeoutError,
                           UnitransError, ValidationError)

__all__ = ["AsyncClient", "AuthenticationError", "BadRequestError", "Client", "ConflictError", "ConnectionFailed",
           "NotFoundError", "OverloadedError", "PayloadTooLargeError", "ServerError", "TaskUnavailableError",
           "TimeoutError", "UnitransError", "ValidationError"]
