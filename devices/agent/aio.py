"""The device API over asyncio streams: the same calls as `HttpTransport`, for thousands of agents in one loop.

A deliberately small HTTP/1.1 client (stdlib only, like the rest of the agent): one connection per request
(`Connection: close`, so a dropped link never poisons a pool), bodies read in bounded chunks (Content-Length,
chunked or until close), a timeout on connecting and on every read. Errors are classified exactly as the
blocking transport does: network trouble, 5xx, 408/425/429 are retryable and carry Retry-After.

With a TLS identity (devices.agent.tls): mutual TLS with the device certificate, the server's key checked against
the pins on every connection before the request is written, and no request to another origin (`foreign_origin`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from devices.agent.errors import json_answer
from devices.agent.limits import MAX_ANSWER_BYTES, AnswerTooLarge, TransferLimits, TransferWatch, declared_too_large
from devices.agent.tls import FOREIGN_ORIGIN, PIN_MISMATCH, PinMismatch, TlsIdentity, origin_check, pin_check
from devices.agent.transport import TransportError, classify_status, content_range

MAX_HEAD_BYTES = 32 * 1024
MAX_JSON_BYTES = MAX_ANSWER_BYTES
ERROR_DETAIL_BYTES = 2048
NETWORK_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError)


class _Response:
    """Status, lower-cased headers and the open stream of one answer."""

    def __init__(self, status: int, headers: dict[str, str], reader: asyncio.StreamReader, writer: Any):
        self.status = status
        self.headers = headers
        self.reader = reader
        self.writer = writer


class AsyncHttpTransport:
    """Speaks to one server as one device, from an asyncio loop: its TLS client certificate (`tls`), or in the
    development mode `Authorization: Device <serial>:<secret>`."""

    def __init__(
        self,
        server: str,
        serial: str = "",
        secret: str = "",
        *,
        timeout: float = 30.0,
        ssl_context: Any = None,
        tls: TlsIdentity | None = None,
    ):
        self.server = server.rstrip("/")
        if tls is not None and urllib.parse.urlsplit(self.server).scheme != "https":
            raise ValueError("a TLS identity needs an https:// server")
        self.auth_headers = {"Authorization": f"Device {serial}:{secret}"} if secret else {}
        self.timeout = timeout
        self.tls = tls
        # One context per agent (thousands of agents share nothing mutable); the pins are checked per connection.
        self.ssl_context = tls.context() if tls is not None else ssl_context
        self.bytes_received = 0  # image bytes received, over all downloads
        self.downloads = 0  # download requests made
        self.resumed_downloads = 0  # of which ranged (resuming a partial image)
        self.requests = 0  # every request attempted

    def _split(self, path: str) -> tuple[str, int, bool, str, str]:
        foreign = origin_check(self.server, path)
        if foreign is not None:
            raise TransportError(
                f"{FOREIGN_ORIGIN}: refused to send a request to {foreign}", retryable=False, code=FOREIGN_ORIGIN
            )
        url = urllib.parse.urlsplit(path if urllib.parse.urlsplit(path).scheme else self.server + path)
        secure = url.scheme == "https"
        host = url.hostname or "127.0.0.1"
        port = url.port or (443 if secure else 80)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return host, port, secure, url.netloc, target

    async def _send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> _Response:
        """Connect, send one request and read the status line and headers (network trouble -> TransportError)."""
        host, port, secure, netloc, target = self._split(path)
        self.requests += 1
        context = (self.ssl_context or ssl.create_default_context()) if secure else None
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, limit=MAX_HEAD_BYTES), self.timeout
            )
            if self.tls is not None:
                pin_check(writer.get_extra_info("ssl_object"), self.tls.pins)  # before a byte of the request
            lines = [f"{method} {target} HTTP/1.1", f"Host: {netloc}", "Connection: close", "User-Agent: ota-agent"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            if body or method == "POST":
                lines.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await asyncio.wait_for(writer.drain(), self.timeout)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
        except PinMismatch as exc:
            _close(writer)
            raise TransportError(str(exc), retryable=True, code=PIN_MISMATCH) from exc
        except NETWORK_ERRORS as exc:
            _close(writer)
            raise TransportError(f"network: {type(exc).__name__}: {exc}", retryable=True) from exc
        try:
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            _close(writer)
            raise TransportError(f"bad answer: {head[:80]!r}", retryable=True) from exc
        fields: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        return _Response(status, fields, reader, writer)

    async def _chunks(
        self, response: _Response, chunk_size: int, watch: TransferWatch | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The body in chunks of at most chunk_size bytes; a body cut short is a retryable TransportError."""
        reader = response.reader

        def timeout() -> float:
            # With limits, no read waits past the deadline or a whole floor window: a stall ends while it happens.
            return watch.read_timeout(self.timeout) if watch is not None else self.timeout

        try:
            if "chunked" in response.headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout())
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        return
                    while size > 0:
                        chunk = await asyncio.wait_for(reader.read(min(size, chunk_size)), timeout())
                        if not chunk:
                            raise EOFError("connection closed inside a chunk")
                        size -= len(chunk)
                        yield chunk
                    await asyncio.wait_for(reader.readexactly(2), timeout())
            length = response.headers.get("content-length")
            remaining = int(length) if length is not None else -1
            while remaining != 0:
                want = chunk_size if remaining < 0 else min(chunk_size, remaining)
                chunk = await asyncio.wait_for(reader.read(want), timeout())
                if not chunk:
                    if remaining > 0:
                        raise EOFError(f"connection closed with {remaining} bytes of the body missing")
                    return
                if remaining > 0:
                    remaining -= len(chunk)
                yield chunk
        except ValueError as exc:
            raise TransportError(f"bad answer: {exc}", retryable=True) from exc
        except NETWORK_ERRORS as exc:
            if watch is not None and isinstance(exc, TimeoutError):
                watch.check()  # a read that waited a whole window: below any floor, or past the deadline
            raise TransportError(f"network: {type(exc).__name__}: {exc}", retryable=True) from exc

    async def _read_body(self, response: _Response, limit: int) -> bytes:
        """The body if it is at most `limit` bytes: a larger declared length is refused unread, else limit + 1 at most."""
        if declared_too_large(response.headers.get("content-length"), limit):
            raise AnswerTooLarge("the answer", limit)
        parts: list[bytes] = []
        size = 0
        async with aclosing(self._chunks(response, 64 * 1024)) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise AnswerTooLarge("the answer", limit)
                parts.append(chunk)
        return b"".join(parts)

    async def _error(self, response: _Response) -> TransportError:
        try:
            detail = (await self._read_body(response, MAX_JSON_BYTES))[:ERROR_DETAIL_BYTES].decode("utf-8", "replace")
        except TransportError:
            detail = ""
        return classify_status(response.status, detail, response.headers.get("retry-after"))

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {**self.auth_headers, "Content-Type": "application/json", "Accept": "application/json"}
        response = await self._send("POST", path, headers, data)
        try:
            if response.status >= 400:
                raise await self._error(response)
            raw = await self._read_body(response, MAX_JSON_BYTES)
        finally:
            _close(response.writer)
        return json_answer(raw)

    async def download(
        self,
        url: str,
        *,
        sha256: str,
        offset: int,
        sink: Callable[[int, bytes], None],
        chunk_size: int = 64 * 1024,
        max_length: int | None = None,
        limits: TransferLimits | None = None,
    ) -> int:
        """Stream the image from `offset` into sink(position, chunk); returns the full image length.

        The position of the first chunk is 0, not `offset`, when the server ignored the range (If-Range failed).
        A body (or a whole file, for a range) over `max_length` is refused (AnswerTooLarge) before it is read;
        `limits` end a transfer that runs past its deadline or below its throughput floor (TransferAborted), the
        chunks already given to the sink staying given."""
        self._split(url)  # a foreign origin is refused before anything is counted or sent
        headers = dict(self.auth_headers)
        self.downloads += 1
        if offset > 0:
            self.resumed_downloads += 1
            headers.update({"Range": f"bytes={offset}-", "If-Range": f'"{sha256}"'})
        response = await self._send("GET", url, headers)
        try:
            if response.status == 416:
                raise TransportError("range not satisfiable", retryable=False, status=416)
            if response.status >= 400:
                raise await self._error(response)
            if response.status == 206:
                position, total = content_range(response.headers.get("content-range", ""))
            else:
                try:
                    position, total = 0, int(response.headers.get("content-length", "-1"))
                except ValueError as exc:
                    raise TransportError(f"bad Content-Length: {exc}", retryable=True) from exc
            if max_length is not None and total > max_length:
                raise AnswerTooLarge(url, max_length)
            watch = TransferWatch(limits) if limits is not None else None
            async with aclosing(self._chunks(response, chunk_size, watch)) as chunks:
                async for chunk in chunks:
                    if max_length is not None and position + len(chunk) > max_length:
                        raise AnswerTooLarge(url, max_length)
                    self.bytes_received += len(chunk)
                    sink(position, chunk)  # the agent's own errors (verify, power loss) pass through unchanged
                    position += len(chunk)
                    if watch is not None:
                        watch.add(len(chunk))
            return total
        finally:
            _close(response.writer)


def _close(writer: Any) -> None:
    if writer is not None:
        try:
            writer.close()
        except (OSError, RuntimeError):
            pass
