"""The agent's one error type for a failed call (standard library only; both transports raise it), and the one
reading of a JSON answer both transports share."""

from __future__ import annotations

import json
from typing import Any


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


def json_answer(raw: bytes) -> dict[str, Any]:
    """A JSON object answer; a body that is not JSON (a proxy or a server in trouble) is a retryable failure, and
    anything but an object reads as empty."""
    try:
        answer = json.loads(raw or b"{}")
    except ValueError as exc:
        raise TransportError(f"bad answer: {exc}", retryable=True) from exc
    return answer if isinstance(answer, dict) else {}
