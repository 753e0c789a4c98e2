"""The small error hierarchy.

Every error carries a stable ``code`` (for scripts and the CLI) and an HTTP ``status``.
One middleware turns them into the JSON envelope ``{"error": {"code", "message"}}``;
the CLI turns the same codes into a message and an exit code.
"""

from __future__ import annotations

from typing import Any


class EdgedError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return {"error": body}


class ConfigError(EdgedError):
    """Invalid configuration: the message names the key. The CLI exits 78 (EX_CONFIG)."""

    code = "invalid_config"
    status = 400


class BadRequest(EdgedError):
    code = "bad_request"
    status = 400


class Unauthorized(EdgedError):
    """A credential (token, signature) is missing or invalid."""

    code = "unauthorized"
    status = 401


class Forbidden(EdgedError):
    code = "forbidden"
    status = 403


class NotFound(EdgedError):
    code = "not_found"
    status = 404


class Conflict(EdgedError):
    code = "conflict"
    status = 409


class PayloadTooLarge(EdgedError):
    code = "payload_too_large"
    status = 413


class QueueFull(EdgedError):
    code = "queue_full"
    status = 429

    def __init__(self, message: str, *, retry_after: float = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class Unavailable(EdgedError):
    """Cannot serve now: does not fit in the budget, draining, component down."""

    code = "unavailable"
    status = 503


class InsufficientStorage(EdgedError):
    code = "outbox_full"
    status = 507


class IntegrityError(EdgedError):
    """A file or record failed its checksum, signature or chain check."""

    code = "integrity"
    status = 422
