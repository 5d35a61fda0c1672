"""A tiny HTTP client for the device API on urllib.request: JSON POSTs and ranged, resumable downloads.

With a TLS identity (devices.agent.tls) it speaks mutual TLS: the device certificate is its identity, the server's
key must be pinned (checked on every connection before anything is sent), redirects are never followed, and a URL
on another origin is refused before connecting (code `foreign_origin`). Without one (development mode only) it
sends `Authorization: Device <serial>:<secret>`.

Every answer is bounded (devices.agent.limits): JSON answers by MAX_ANSWER_BYTES, downloads by their `max_length`,
refused on a declared Content-Length before the body is read and otherwise after at most bound + 1 bytes; a download
with `limits` runs under a TransferWatch (deadline and throughput floor, checked on every read)."""

from __future__ import annotations

import functools
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from devices.agent.errors import TransportError, json_answer
from devices.agent.limits import (
    MAX_ANSWER_BYTES,
    AnswerTooLarge,
    TransferLimits,
    TransferWatch,
    declared_too_large,
)
from devices.agent.tls import FOREIGN_ORIGIN, PIN_MISMATCH, PinMismatch, TlsIdentity, origin_check, pin_check

__all__ = ["HttpTransport", "TransportError", "classify_status", "content_range"]

RETRYABLE_STATUSES = frozenset({408, 425, 429})


def classify_status(status: int, detail: str, retry_after: str | None) -> TransportError:
    """The TransportError for an HTTP error status: 5xx, 408, 425 and 429 are retryable (honouring Retry-After)."""
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    return TransportError(
        f"HTTP {status}: {detail}",
        retryable=retryable,
        status=status,
        retry_after=_retry_after(retry_after),
        code=_error_code(detail),
    )


def _error_code(detail: str) -> str:
    """The code of the server's error envelope in an answer's body; "" for any other body."""
    try:
        error = json.loads(detail).get("error")
    except (ValueError, AttributeError):
        return ""
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _from_http_error(exc: urllib.error.HTTPError) -> TransportError:
    try:
        detail = exc.read(2048).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the body is only for the message
        detail = ""
    return classify_status(exc.code, detail, exc.headers.get("Retry-After") if exc.headers else None)


NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


class _PinnedConnection(http.client.HTTPSConnection):
    """An HTTPS connection that checks the server's key against the pins right after the handshake."""

    def __init__(self, *args: Any, pins: frozenset[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pins = pins

    def connect(self) -> None:
        super().connect()
        try:
            pin_check(self.sock, self._pins)
        except PinMismatch:
            self.sock.close()
            raise


class _PinnedHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, pins: frozenset[str]):
        super().__init__(context=context)
        self._pins = pins

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_PinnedConnection, pins=self._pins), req, context=self._context)  # type: ignore[attr-defined]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the agent's requests go to its origin only."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _pin_failure(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", None)
    return isinstance(exc, PinMismatch) or isinstance(reason, PinMismatch)


class HttpTransport:
    """Speaks to one server as one device: its TLS client certificate (`tls`), or in the development mode
    `Authorization: Device <serial>:<secret>`."""

    def __init__(
        self, server: str, serial: str = "", secret: str = "", *, timeout: float = 30.0, tls: TlsIdentity | None = None
    ):
        self.server = server.rstrip("/")
        if tls is not None and urllib.parse.urlsplit(self.server).scheme != "https":
            raise ValueError("a TLS identity needs an https:// server")
        self.auth_headers = {"Authorization": f"Device {serial}:{secret}"} if secret else {}
        self.timeout = timeout
        self.tls = tls
        handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
        if tls is not None:
            handlers.append(_PinnedHandler(tls.context(), tls.pins))
        self.opener = urllib.request.build_opener(*handlers)
        self.bytes_received = 0  # image bytes received, over all downloads (tests check resume efficiency)
        self.downloads = 0  # download requests made
        self.resumed_downloads = 0  # of which ranged (resuming a partial image)

    def _url(self, path: str) -> str:
        foreign = origin_check(self.server, path)
        if foreign is not None:
            raise TransportError(
                f"{FOREIGN_ORIGIN}: refused to send a request to {foreign}", retryable=False, code=FOREIGN_ORIGIN
            )
        return path if urllib.parse.urlsplit(path).scheme else self.server + path

    def _network_error(self, exc: BaseException) -> TransportError:
        if _pin_failure(exc):
            return TransportError(f"{PIN_MISMATCH}: the server's key is not pinned", retryable=True, code=PIN_MISMATCH)
        return TransportError(f"network: {exc}", retryable=True)

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        request = urllib.request.Request(
            self._url(path),
            data=data,
            method="POST",
            headers={**self.auth_headers, "Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                raw = _read_bounded(response, MAX_ANSWER_BYTES, "the answer")
        except urllib.error.HTTPError as exc:
            raise _from_http_error(exc) from exc
        except NETWORK_ERRORS as exc:
            raise self._network_error(exc) from exc
        return json_answer(raw)

    def download(
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
        target = self._url(url)  # a foreign origin is refused before anything is counted or sent
        headers = dict(self.auth_headers)
        self.downloads += 1
        if offset > 0:
            self.resumed_downloads += 1
            headers.update({"Range": f"bytes={offset}-", "If-Range": f'"{sha256}"'})
        request = urllib.request.Request(target, headers=headers, method="GET")
        watch = TransferWatch(limits) if limits is not None else None
        # With limits, no single read may wait past the deadline or a whole floor window (a silent stall ends too).
        timeout = watch.read_timeout(self.timeout) if watch is not None else self.timeout
        try:
            with self.opener.open(request, timeout=timeout) as response:
                if response.status == 206:
                    start, total = content_range(response.headers.get("Content-Range", ""))
                else:
                    start, total = 0, _length(response.headers.get("Content-Length"))
                if max_length is not None and total > max_length:
                    raise AnswerTooLarge(url, max_length)
                position = start
                while True:
                    chunk, stop = _next_chunk(response, chunk_size, watch)
                    if max_length is not None and position + len(chunk) > max_length:
                        raise AnswerTooLarge(url, max_length)
                    if chunk:
                        self.bytes_received += len(chunk)
                        sink(position, chunk)  # what arrived before an abort is kept: the resume starts after it
                        position += len(chunk)
                    if stop is not None:
                        raise stop
                    if not chunk:
                        break
                return total
        except urllib.error.HTTPError as exc:
            if exc.code == 416:
                raise TransportError("range not satisfiable", retryable=False, status=416) from exc
            raise _from_http_error(exc) from exc
        except NETWORK_ERRORS as exc:
            raise self._network_error(exc) from exc


def _next_chunk(
    response: http.client.HTTPResponse, chunk_size: int, watch: TransferWatch | None
) -> tuple[bytes, BaseException | None]:
    """Up to chunk_size bytes (fewer only at the end of the body) and the error that stopped the read, if any.

    Read with read1 (what has arrived, one receive at most), so the watch sees a trickle byte by byte and ends it
    while it trickles; the bytes gathered before an abort or a dropped link are returned with the error."""
    gathered = bytearray()
    try:
        while len(gathered) < chunk_size:
            piece = response.read1(chunk_size - len(gathered))
            if not piece:
                break
            gathered += piece
            if watch is not None:
                watch.add(len(piece))
    except TimeoutError as exc:
        if watch is not None:
            try:
                watch.check()  # a read that waited a whole window: below any floor, or past the deadline
            except TransportError as aborted:
                return bytes(gathered), aborted
        return bytes(gathered), exc
    except Exception as exc:  # noqa: BLE001 - handed to the caller after the bytes gathered so far
        return bytes(gathered), exc
    return bytes(gathered), None


def _length(value: str | None) -> int:
    try:
        return int(value) if value is not None else -1
    except ValueError as exc:
        raise TransportError(f"bad Content-Length {value!r}", retryable=True) from exc


def _read_bounded(response: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    """The body, if it is at most `limit` bytes: a larger declared length is refused unread, else limit + 1 at most."""
    if declared_too_large(response.headers.get("Content-Length"), limit):
        raise AnswerTooLarge(what, limit)
    body = response.read(limit + 1)
    if len(body) > limit:
        raise AnswerTooLarge(what, limit)
    return body


def content_range(value: str) -> tuple[int, int]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (-1, 1000)."""
    try:
        unit, _, rest = value.strip().partition(" ")
        span, _, total = rest.partition("/")
        if unit != "bytes":
            raise ValueError(value)
        start = -1 if span == "*" else int(span.split("-")[0])
        return start, int(total)
    except ValueError as exc:
        raise TransportError(f"bad Content-Range {value!r}", retryable=True) from exc
