"""The agent's one error type for a failed call (standard library only; both transports raise it)."""

from __future__ import annotations


class TransportError(Exception):
    """A failed call: `retryable` for network trouble, 5xx and 429/408; final for other 4xx."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        code: str = "",
    ):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.code = code  # the server's error code ({"error": {"code": ...}}), "" when the answer had none
