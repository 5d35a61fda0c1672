"""A TCP proxy that puts a bad cellular link between the agents and the server: real faults at the socket level.

Each accepted connection draws its fate from a random generator seeded with (seed, connection number), in a
fixed order, so a run is reproducible for a given seed and arrival order:

- drop: closed right after it was accepted, before a byte reaches the server;
- stall: held open without forwarding anything for `stall_seconds`, then closed;
- cut: only for requests that start with `cut_match` (e.g. image downloads): the first K response bytes reach
  the client, then both sides are closed (K drawn from `cut_after`, counted after the first `cut_skip` bytes).
  Over TLS the request is not readable: `cut_match=b""` matches every connection and `cut_skip` passes the
  handshake and small answers (a check-in), so only long responses (image downloads) are cut;
- latency: every chunk in both directions is delayed by half the round-trip `latency_seconds` plus or minus
  `jitter_seconds`, pipelined (delays never reorder bytes and do not cap throughput).

Upstreams are used round-robin (several web processes behind one address). Counters say what was done.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass, field
from typing import Any

READ_BYTES = 64 * 1024
QUEUE_CHUNKS = 64  # chunks in flight per direction: memory per connection stays bounded


@dataclass(frozen=True)
class NetworkFaults:
    """What the link does to connections; rates are fractions of connections (0 = never)."""

    latency_seconds: float = 0.0
    jitter_seconds: float = 0.0
    drop_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 3.0
    cut_rate: float = 0.0
    cut_match: bytes = b"GET "
    cut_after: tuple[int, int] = (512, 64 * 1024)
    cut_skip: int = 0

    @property
    def any(self) -> bool:
        return bool(self.latency_seconds or self.jitter_seconds or self.drop_rate or self.stall_rate or self.cut_rate)


@dataclass
class ProxyCounters:
    """What the proxy did, for the drill report."""

    connections: int = 0
    dropped: int = 0
    stalled: int = 0
    cut: int = 0
    cut_armed_not_reached: int = 0  # cut drawn, but the response was shorter than K
    upstream_errors: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0
    open_connections: int = 0
    by_upstream: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Fate:
    drop: bool
    stall: bool
    cut_draw: float
    cut_after: int


class FaultProxy:
    """Listen on host:port (0: any free port) and forward to the upstreams, applying `faults`."""

    def __init__(
        self,
        upstreams: list[tuple[str, int]],
        faults: NetworkFaults | None = None,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        if not upstreams:
            raise ValueError("at least one upstream")
        self.upstreams = list(upstreams)
        self.faults = faults or NetworkFaults()
        self.seed = seed
        self.host = host
        self.port = port
        self.counters = ProxyCounters()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop accepting and cut every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _fate(self, number: int) -> _Fate:
        rng = random.Random(f"{self.seed}:{number}")
        faults = self.faults
        drop = rng.random() < faults.drop_rate
        stall = rng.random() < faults.stall_rate
        cut_draw = rng.random()
        low, high = faults.cut_after
        return _Fate(drop=drop, stall=stall, cut_draw=cut_draw, cut_after=rng.randint(low, max(low, high)))

    def _delay(self, rng: random.Random) -> float:
        faults = self.faults
        if not (faults.latency_seconds or faults.jitter_seconds):
            return 0.0
        jitter = rng.uniform(-faults.jitter_seconds, faults.jitter_seconds) / 2
        return max(0.0, faults.latency_seconds / 2 + jitter)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number = self.counters.connections
        self.counters.connections += 1
        self.counters.open_connections += 1
        try:
            await self._serve(number, client_reader, client_writer)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self.counters.open_connections -= 1
            _abort(client_writer)
            self._tasks.discard(task)

    async def _serve(self, number: int, client_reader: asyncio.StreamReader, client_writer: Any) -> None:
        fate = self._fate(number)
        if fate.drop:
            self.counters.dropped += 1
            return
        if fate.stall:
            self.counters.stalled += 1
            await asyncio.sleep(self.faults.stall_seconds)
            return
        host, port = self.upstreams[number % len(self.upstreams)]
        key = f"{host}:{port}"
        self.counters.by_upstream[key] = self.counters.by_upstream.get(key, 0) + 1
        try:
            server_reader, server_writer = await asyncio.open_connection(host, port)
        except OSError:
            self.counters.upstream_errors += 1
            return
        rng = random.Random(f"{self.seed}:{number}:delay")
        try:
            first = await client_reader.read(READ_BYTES)  # the request line tells a download from the rest
            limit = None
            if first and self.faults.cut_rate and first.startswith(self.faults.cut_match):
                if fate.cut_draw < self.faults.cut_rate:
                    limit = self.faults.cut_skip + fate.cut_after
            upstream = asyncio.create_task(self._pipe(client_reader, server_writer, rng, first, to_server=True))
            downstream = asyncio.create_task(self._pipe(server_reader, client_writer, rng, b"", limit=limit))
            try:
                outcome = await downstream
            finally:
                upstream.cancel()
                await asyncio.gather(upstream, return_exceptions=True)
            if limit is not None:
                if outcome == "cut":
                    self.counters.cut += 1
                else:
                    self.counters.cut_armed_not_reached += 1
        finally:
            _abort(server_writer)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: Any,
        rng: random.Random,
        first: bytes,
        *,
        to_server: bool = False,
        limit: int | None = None,
    ) -> str:
        """Forward source to sink with the link's delay; "eof", or "cut" once `limit` bytes went through."""
        if not (self.faults.latency_seconds or self.faults.jitter_seconds):
            return await self._pipe_direct(source, sink, first, to_server=to_server, limit=limit)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def pump() -> None:
            last_due = 0.0
            pending = first
            while True:
                data = pending or await source.read(READ_BYTES)
                pending = b""
                due = max(last_due, loop.time() + self._delay(rng))
                last_due = due
                await queue.put((due, data))
                if not data:
                    return

        pumping = asyncio.create_task(pump())
        sent = 0
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if to_server and sink.can_write_eof():
                        sink.write_eof()
                    return "eof"
                forwarded = await self._forward(sink, data, sent, to_server=to_server, limit=limit)
                if forwarded is None:
                    return "cut"
                sent = forwarded
        except (ConnectionError, OSError):
            return "error"
        finally:
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)

    async def _forward(self, sink: Any, data: bytes, sent: int, *, to_server: bool, limit: int | None) -> int | None:
        """Write `data`, cut at `limit` bytes in all; the new total sent, or None once the stream was cut."""
        if limit is not None and sent + len(data) >= limit:
            sink.write(data[: limit - sent])
            self._count(to_server, limit - sent)
            await sink.drain()
            return None
        sink.write(data)
        self._count(to_server, len(data))
        await sink.drain()
        return sent + len(data)

    async def _pipe_direct(
        self, source: asyncio.StreamReader, sink: Any, first: bytes, *, to_server: bool, limit: int | None
    ) -> str:
        """`_pipe` without a delay: no queue, no timers (a fleet of thousands on a healthy link)."""
        sent = 0
        data = first
        try:
            while True:
                data = data or await source.read(READ_BYTES)
                if not data:
                    if to_server and sink.can_write_eof():
                        sink.write_eof()
                    return "eof"
                forwarded = await self._forward(sink, data, sent, to_server=to_server, limit=limit)
                if forwarded is None:
                    return "cut"
                sent = forwarded
                data = b""
        except (ConnectionError, OSError):
            return "error"

    def _count(self, to_server: bool, size: int) -> None:
        if to_server:
            self.counters.bytes_to_server += size
        else:
            self.counters.bytes_to_client += size


def _abort(writer: Any) -> None:
    try:
        writer.close()
    except (OSError, RuntimeError):
        pass
