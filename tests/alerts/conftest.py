"""Fixtures of the alert tests: a local webhook receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class _Receiver(BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[tuple[Any, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers, body))  # case-insensitive, as HTTP headers are
        code = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def receiver(settings) -> Iterator[type[_Receiver]]:
    """A local webhook receiver that answers the queued status codes in turn (then 200)."""
    handler = type("Receiver", (_Receiver,), {"answers": [], "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.OTA_ALERT_WEBHOOK_URL = f"http://127.0.0.1:{server.server_address[1]}/hooks/ota"
    settings.OTA_ALERT_WEBHOOK_BACKOFF_SECONDS = 10
    yield handler
    server.shutdown()
    server.server_close()
