"""The fault proxy at the socket level: real TCP connections through it to a real upstream, each fault observed
from the client's side and the upstream's side."""

from __future__ import annotations

import asyncio
import time

import pytest

from rollouts.drill.proxy import FaultProxy, NetworkFaults

pytestmark = pytest.mark.asyncio

BODY = bytes(range(256)) * 400  # 102,400 bytes


class Upstream:
    """An HTTP-ish server: answers every request with a fixed head and BODY, then closes; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        request = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(request)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
        await writer.drain()
        writer.close()


async def exchange(port: int, request: bytes = b"GET /image HTTP/1.0\r\n\r\n", timeout: float = 10) -> bytes:
    """Send one request through the proxy and read until the proxy closes (or resets) the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""  # closed with our request unread: the kernel answers with a reset
    finally:
        writer.close()


async def test_without_faults_every_byte_goes_through_both_ways():
    async with Upstream() as upstream:
        proxy = await FaultProxy([("127.0.0.1", upstream.port)], seed=1).start()
        try:
            answer = await exchange(proxy.port, b"POST /x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
        finally:
            await proxy.close()
    assert answer.endswith(BODY) and answer.startswith(b"HTTP/1.0 200 OK")
    assert upstream.requests == [b"POST /x HTTP/1.0\r\nContent-Length: 3\r\n\r\n"]
    counters = proxy.counters
    assert (counters.connections, counters.dropped, counters.stalled, counters.cut) == (1, 0, 0, 0)
    assert counters.bytes_to_client == len(answer) and counters.bytes_to_server >= 40


async def test_dropped_connections_are_closed_before_the_server_sees_them():
    async with Upstream() as upstream:
        proxy = await FaultProxy([("127.0.0.1", upstream.port)], NetworkFaults(drop_rate=1.0), seed=1).start()
        try:
            answers = [await exchange(proxy.port) for _ in range(5)]
        finally:
            await proxy.close()
    assert answers == [b""] * 5
    assert upstream.connections == 0
    assert proxy.counters.dropped == 5 and proxy.counters.connections == 5


async def test_a_stalled_connection_gets_nothing_for_the_stall_then_is_closed():
    async with Upstream() as upstream:
        faults = NetworkFaults(stall_rate=1.0, stall_seconds=0.6)
        proxy = await FaultProxy([("127.0.0.1", upstream.port)], faults, seed=1).start()
        try:
            started = time.monotonic()
            answer = await exchange(proxy.port)
            held = time.monotonic() - started
        finally:
            await proxy.close()
    assert answer == b"" and held >= 0.55
    assert upstream.connections == 0 and proxy.counters.stalled == 1


async def test_downloads_are_cut_after_k_bytes_and_other_requests_are_not():
    async with Upstream() as upstream:
        faults = NetworkFaults(cut_rate=1.0, cut_match=b"GET ", cut_after=(5000, 5000))
        proxy = await FaultProxy([("127.0.0.1", upstream.port)], faults, seed=1).start()
        try:
            cut = await exchange(proxy.port, b"GET /image HTTP/1.0\r\n\r\n")
            whole = await exchange(proxy.port, b"POST /status HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        finally:
            await proxy.close()
    assert len(cut) == 5000  # the head and the start of the body, then the link went away
    assert whole.endswith(BODY)
    assert proxy.counters.cut == 1 and upstream.connections == 2


async def test_over_tls_every_connection_may_be_cut_but_only_after_the_skipped_bytes():
    """The drills speak TLS through the proxy: it cannot read the request, so `cut_match=b""` arms every connection
    and `cut_skip` lets the handshake and short answers through whole; only long answers are cut."""
    async with Upstream() as upstream:
        faults = NetworkFaults(cut_rate=1.0, cut_match=b"", cut_after=(5000, 5000), cut_skip=len(BODY) + 100)
        proxy = await FaultProxy([("127.0.0.1", upstream.port)], faults, seed=1).start()
        try:
            whole = await exchange(proxy.port, b"\x16\x03\x01 opaque TLS bytes\r\n\r\n")
        finally:
            await proxy.close()
        short_skip = NetworkFaults(cut_rate=1.0, cut_match=b"", cut_after=(5000, 5000), cut_skip=1000)
        proxy = await FaultProxy([("127.0.0.1", upstream.port)], short_skip, seed=1).start()
        try:
            cut = await exchange(proxy.port, b"\x16\x03\x01 opaque TLS bytes\r\n\r\n")
        finally:
            await proxy.close()
    assert whole.endswith(BODY)  # shorter than the skipped bytes plus K: never cut
    assert len(cut) == 6000  # the skipped 1000 bytes, then K = 5000, then the link went away


async def test_latency_delays_the_answer_without_reordering_it():
    async with Upstream() as upstream:
        faults = NetworkFaults(latency_seconds=0.4, jitter_seconds=0.1)
        proxy = await FaultProxy([("127.0.0.1", upstream.port)], faults, seed=3).start()
        try:
            started = time.monotonic()
            answer = await exchange(proxy.port)
            took = time.monotonic() - started
        finally:
            await proxy.close()
    assert answer.endswith(BODY)  # every byte, in order
    assert took >= 0.3  # half the round trip each way, minus at most half the jitter each way


async def test_fates_are_seeded_per_connection_and_shares_hold():
    faults = NetworkFaults(drop_rate=0.1, stall_rate=0.05, cut_rate=0.2)
    first = FaultProxy([("127.0.0.1", 1)], faults, seed=42)
    again = FaultProxy([("127.0.0.1", 1)], faults, seed=42)
    other = FaultProxy([("127.0.0.1", 1)], faults, seed=43)
    fates = [first._fate(n) for n in range(4000)]
    assert fates == [again._fate(n) for n in range(4000)]
    assert fates != [other._fate(n) for n in range(4000)]
    assert 0.08 < sum(f.drop for f in fates) / 4000 < 0.12
    assert 0.035 < sum(f.stall for f in fates) / 4000 < 0.065
    assert 0.17 < sum(f.cut_draw < 0.2 for f in fates) / 4000 < 0.23


async def test_connections_are_spread_over_the_upstreams_and_a_dead_one_is_counted():
    async with Upstream() as first, Upstream() as second:
        proxy = await FaultProxy([("127.0.0.1", first.port), ("127.0.0.1", second.port)], seed=1).start()
        try:
            for _ in range(4):
                assert (await exchange(proxy.port)).endswith(BODY)
        finally:
            await proxy.close()
        dead = await FaultProxy([("127.0.0.1", 1)], seed=1).start()
        try:
            assert await exchange(dead.port) == b""
        finally:
            await dead.close()
    assert (first.connections, second.connections) == (2, 2)
    assert dead.counters.upstream_errors == 1
