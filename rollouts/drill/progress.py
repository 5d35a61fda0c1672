"""A one-line progress bar for drills on a terminal (stderr); silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """`update(done, total, label)` redraws the line at most every `interval` seconds; `close()` ends it."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None, width: int = 30, interval=0.2):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self.interval = interval
        self.started = time.monotonic()
        self._last = 0.0
        self._shown = False

    def render(self, done: int, total: int, label: str) -> str:
        share = min(1.0, done / total) if total else 0.0
        filled = int(round(share * self.width))
        elapsed = time.monotonic() - self.started
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {share * 100:5.1f}% {done}/{total} {label} {elapsed:6.1f}s"

    def update(self, done: int, total: int, label: str = "", *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self.stream.write("\r\x1b[2K" + self.render(done, total, label))
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
