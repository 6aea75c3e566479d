"""The one exception a request's own fault raises: status, message, per-field details."""

from __future__ import annotations

from events.store import Issue


class ApiError(Exception):
    """Answered as JSON `{"error": message, "details": [...]}` with `status`."""

    def __init__(self, status: int, message: str, details: list[Issue] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
