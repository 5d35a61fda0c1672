"""The agent against a hostile or broken server over real sockets: oversized answers are refused without being read
whole, a trickled download is aborted by the throughput floor while it trickles and resumes with Range from the kept
bytes on the next cycle, and a transfer running into the offer's deadline ends as a `download` failure."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devices.agent import Agent, HttpTransport
from devices.agent.aio import AsyncHttpTransport
from devices.agent.limits import (
    ANSWER_TOO_LARGE,
    MAX_ANSWER_BYTES,
    TRANSFER_TOO_SLOW,
    TransferLimits,
)
from devices.agent.transport import TransportError

HUGE = 32 * 1024 * 1024
PIECE = 64 * 1024
IMAGE = bytes(range(256)) * 40  # 10,240 bytes
IMAGE_SHA = hashlib.sha256(IMAGE).hexdigest()
ARTIFACT = f"/device/v1/artifacts/{IMAGE_SHA}/?token=t"
# Far below the floor: 1 byte every 0.5 s (2 bytes/s) against a floor of 200 bytes/s averaged over 1.5 s.
TRICKLE_LIMITS = TransferLimits(seconds=60.0, floor_bytes_per_second=200, window_seconds=1.5)


@dataclass
class Behaviour:
    """What the fake device API does; the test flips it between cycles."""

    checkin_mode: str = "offer"  # offer | huge_declared | huge_undeclared
    artifact_mode: str = "fast"  # fast | trickle
    deadline_at: str | None = None
    sent: int = 0  # body bytes the server managed to hand to the socket for the last huge answer
    ranges: list[str] = field(default_factory=list)  # the Range header of every artifact GET ("" for none)
    reports: list[dict[str, Any]] = field(default_factory=list)


def _handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _huge(self, declared: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if declared:
                self.send_header("Content-Length", str(HUGE))
            self.send_header("Connection", "close")
            self.end_headers()
            piece = b" " * PIECE
            behaviour.sent = 0
            try:
                self.wfile.write(b'{"poll_interval_seconds": 60, "pad": "')
                while behaviour.sent < HUGE:
                    self.wfile.write(piece)
                    behaviour.sent += PIECE
            except OSError:
                pass  # the agent hung up: what it refused was never read whole

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            if self.path == "/device/v1/checkin/":
                if behaviour.checkin_mode.startswith("huge"):
                    self._huge(declared=behaviour.checkin_mode == "huge_declared")
                    return
                offer = {
                    "deployment_id": 7,
                    "kind": "update",
                    "release_version": "2.0.0",
                    "release_counter": 2,
                    "artifact": {"sha256": IMAGE_SHA, "length": len(IMAGE), "url": ARTIFACT},
                    "deadline_at": behaviour.deadline_at,
                    "director": None,
                }
                self._json({"poll_interval_seconds": 60, "offer": offer})
            elif self.path.startswith("/device/v1/deployments/"):
                behaviour.reports.append(body)
                self._json({"deployment_id": 7, "status": body.get("status"), "applied": True})
            else:
                self._json({"accepted": 0})

        def do_GET(self) -> None:  # noqa: N802
            wanted = self.headers.get("Range", "")
            behaviour.ranges.append(wanted)
            start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted else 0
            if wanted:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(IMAGE) - 1}/{len(IMAGE)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE) - start))
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                if behaviour.artifact_mode == "trickle":
                    for position in range(start, len(IMAGE)):
                        self.wfile.write(IMAGE[position : position + 1])
                        self.wfile.flush()
                        time.sleep(0.5)
                else:
                    self.wfile.write(IMAGE[start:])
            except OSError:
                pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()


def _state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "state.json").read_text())


@pytest.mark.parametrize("mode", ["huge_declared", "huge_undeclared"])
def test_oversized_checkin_answer_is_refused_without_reading_it_whole(server, tmp_path, mode) -> None:
    url, behaviour = server
    behaviour.checkin_mode = mode
    agent = Agent(tmp_path / "dev", HttpTransport(url, "dev-1", "s"))
    before = _state(tmp_path / "dev")
    started = time.monotonic()
    with pytest.raises(TransportError) as refused:
        agent.step()
    assert refused.value.code == ANSWER_TOO_LARGE
    assert refused.value.retryable  # a server in trouble: back off, try again later
    assert time.monotonic() - started < 10
    time.sleep(0.2)  # let the server notice the hang-up
    assert behaviour.sent < HUGE  # the agent hung up long before 32 MiB
    assert _state(tmp_path / "dev") == before  # nothing changed on the device


@pytest.mark.parametrize("mode", ["huge_declared", "huge_undeclared"])
def test_oversized_answer_is_refused_by_the_asyncio_transport_too(server, mode) -> None:
    url, behaviour = server
    behaviour.checkin_mode = mode
    transport = AsyncHttpTransport(url, "dev-1", "s")
    with pytest.raises(TransportError) as refused:
        asyncio.run(transport.post_json("/device/v1/checkin/", {}))
    assert refused.value.code == ANSWER_TOO_LARGE
    time.sleep(0.2)
    assert behaviour.sent < HUGE
    assert MAX_ANSWER_BYTES < HUGE


def _resumes_after_trickle(tmp_path: Path, behaviour: Behaviour, agent: Agent, cycle: Any) -> None:
    directory = agent.store.dir
    with pytest.raises(TransportError) as aborted:
        cycle()
    assert aborted.value.code == TRANSFER_TOO_SLOW
    state = _state(directory)
    kept = state["download_offset"]
    assert state["deployment"]["phase"] == "downloading"  # not failed: it resumes next cycle
    assert 0 < kept < 10  # a few bytes at 2 bytes/s before the 1.5 s window judged the floor
    assert (directory / "download.part").read_bytes() == IMAGE[:kept]  # the partial bytes are kept
    assert [r["status"] for r in behaviour.reports] == ["downloading"]  # no failure was reported

    behaviour.artifact_mode = "fast"
    cycle()
    assert behaviour.ranges == ["", f"bytes={kept}-"]  # resumed from the kept bytes, not from zero
    assert agent.transport.resumed_downloads == 1
    assert agent.transport.bytes_received == len(IMAGE)  # no byte fetched twice
    phases = [r["status"] for r in behaviour.reports]
    assert "downloaded" in phases and "failed" not in phases


def test_trickled_download_is_aborted_by_the_floor_and_resumed_with_range(server, tmp_path) -> None:
    url, behaviour = server
    behaviour.artifact_mode = "trickle"
    agent = Agent(tmp_path / "dev", HttpTransport(url, "dev-1", "s"), transfer_limits=TRICKLE_LIMITS)
    started = time.monotonic()
    _resumes_after_trickle(tmp_path, behaviour, agent, agent.step)
    assert time.monotonic() - started < 15  # ended while it trickled: 10,240 bytes would take 85 minutes


def test_trickled_download_is_aborted_and_resumed_on_the_asyncio_transport(server, tmp_path) -> None:
    url, behaviour = server
    behaviour.artifact_mode = "trickle"
    agent = Agent(tmp_path / "dev", AsyncHttpTransport(url, "dev-1", "s"), transfer_limits=TRICKLE_LIMITS)
    _resumes_after_trickle(tmp_path, behaviour, agent, lambda: asyncio.run(agent.astep()))


def test_transfer_running_into_the_offer_deadline_ends_as_a_download_failure(server, tmp_path) -> None:
    url, behaviour = server
    behaviour.artifact_mode = "trickle"
    deadline = datetime.now(UTC) + timedelta(seconds=2)
    behaviour.deadline_at = deadline.isoformat().replace("+00:00", "Z")
    # No floor to speak of: only the deadline can end this transfer (the cap alone would allow an hour).
    limits = TransferLimits(seconds=3600.0, floor_bytes_per_second=0, window_seconds=1.0)
    agent = Agent(tmp_path / "dev", HttpTransport(url, "dev-1", "s"), transfer_limits=limits)
    started = time.monotonic()
    agent.step()
    assert time.monotonic() - started < 6  # ended at the deadline, while bytes still trickled
    failed = [r for r in behaviour.reports if r["status"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["failure_class"] == "download"  # a class the server and the plan's retries know
    assert "transfer_deadline" in failed[0]["detail"]
    assert _state(tmp_path / "dev")["deployment"] is None
