"""Bounds on what the agent reads and how long a transfer may take (standard library only; both transports use it).

- Every answer is bounded in size: a JSON answer (check-in, status) at most `MAX_ANSWER_BYTES`, a metadata file at
  most its `FetchBytes.max_length`, an image at most its offered length. A declared Content-Length over the bound
  is refused before a byte of the body is read; without one, at most bound + 1 bytes are read (`AnswerTooLarge`).
- Every transfer runs under a `TransferWatch`: a wall-clock limit (the offer's deadline or the per-transfer cap,
  whichever comes first) and a throughput floor (fewer than `floor_bytes_per_second` averaged over the last
  `window_seconds` aborts it), checked on every chunk and on every read that waits, so a trickle or a stall ends
  while it happens, not after. An aborted image transfer keeps its bytes; the agent resumes it with Range.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from devices.agent.errors import TransportError

MAX_ANSWER_BYTES = 1024 * 1024  # a check-in answer carries the director's signed targets (hybrid: tens of KiB)
ANSWER_TOO_LARGE = "answer_too_large"
TRANSFER_DEADLINE = "transfer_deadline"
TRANSFER_TOO_SLOW = "transfer_too_slow"
DEFAULT_TRANSFER_SECONDS = 900.0  # a download token lives at most 15 minutes: a longer transfer could not go on
DEFAULT_FLOOR_BYTES_PER_SECOND = 256
DEFAULT_FLOOR_WINDOW_SECONDS = 60.0
MIN_READ_TIMEOUT = 0.05


class AnswerTooLarge(TransportError):
    """The server's answer is larger than the agent reads for it: refused before or while reading, never whole."""

    def __init__(self, what: str, limit: int):
        super().__init__(
            f"{ANSWER_TOO_LARGE}: {what} is larger than {limit} bytes", retryable=True, code=ANSWER_TOO_LARGE
        )
        self.limit = limit


class TransferAborted(TransportError):
    """A transfer ended by its deadline or its throughput floor; the bytes received so far are kept (retryable)."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message, retryable=True, code=code)


def declared_too_large(content_length: str | None, limit: int | None) -> bool:
    """Whether a declared Content-Length already exceeds the bound (an unreadable one is left to the reader)."""
    if limit is None or not content_length:
        return False
    try:
        return int(content_length) > limit
    except ValueError:
        return False


@dataclass(frozen=True)
class TransferLimits:
    """How long one transfer may run (seconds from its start) and the least throughput it must keep."""

    seconds: float = DEFAULT_TRANSFER_SECONDS
    floor_bytes_per_second: int = DEFAULT_FLOOR_BYTES_PER_SECOND
    window_seconds: float = DEFAULT_FLOOR_WINDOW_SECONDS


class TransferWatch:
    """Enforces one transfer's TransferLimits while bytes flow (monotonic clock; immune to a wall clock change)."""

    def __init__(self, limits: TransferLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self.started = clock()
        self.received = 0
        # (when, bytes received by then): enough history to average over the last window
        self._marks: deque[tuple[float, int]] = deque([(self.started, 0)])

    def read_timeout(self, ceiling: float) -> float:
        """How long one read may wait: never past the deadline, never longer than the floor's window."""
        left = self.started + self.limits.seconds - self.clock()
        return max(MIN_READ_TIMEOUT, min(ceiling, self.limits.window_seconds, left))

    def add(self, count: int) -> None:
        """Count received bytes, then check the limits."""
        self.received += count
        self._marks.append((self.clock(), self.received))
        self.check()

    def check(self) -> None:
        """Raise TransferAborted when the deadline passed or the last window averaged below the floor."""
        now = self.clock()
        limits = self.limits
        if now - self.started >= limits.seconds:
            raise TransferAborted(
                f"{TRANSFER_DEADLINE}: the transfer ran {now - self.started:.1f}s, its limit is {limits.seconds:.1f}s "
                f"({self.received} bytes received)",
                code=TRANSFER_DEADLINE,
            )
        if now - self.started < limits.window_seconds:
            return
        horizon = now - limits.window_seconds
        while len(self._marks) > 1 and self._marks[1][0] <= horizon:
            self._marks.popleft()
        rate = (self.received - self._marks[0][1]) / limits.window_seconds
        if rate < limits.floor_bytes_per_second:
            raise TransferAborted(
                f"{TRANSFER_TOO_SLOW}: {rate:.1f} bytes/s over the last {limits.window_seconds:.0f}s, the floor is "
                f"{limits.floor_bytes_per_second} bytes/s ({self.received} bytes received)",
                code=TRANSFER_TOO_SLOW,
            )
