"""The agent's TLS identity and server pinning (stdlib ssl + cryptography; nothing of the server).

An identity directory (written by `python manage.py devices provision`) holds:
- `device-key.pem` (EC P-256, mode 0600) and `device.pem` (the device certificate, then the issuing CA): what the
  agent presents as its TLS client certificate; the server knows the device by it.
- `ca.pem`: the device CA bundle the server's certificate must chain to.
- `server-pins.txt`: sha256 hex of the SubjectPublicKeyInfo of the server key and of its backup key (rotation);
  one per line. Every connection's server certificate must carry one of them, checked after the handshake and
  before a single byte of the request is sent (`pin_check`), on both transports.

Origin discipline: the agent sends requests only to its configured origin (scheme, host, port);
`origin_check` refuses any other URL (an offer pointing the download elsewhere) before connecting.
"""

from __future__ import annotations

import hashlib
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PIN_MISMATCH = "server_pin_mismatch"
FOREIGN_ORIGIN = "foreign_origin"


class PinMismatch(ssl.SSLError):
    """The server's certificate carries none of the pinned keys: nothing was sent."""


@dataclass(frozen=True)
class TlsIdentity:
    """Where the agent's client certificate, key, CA bundle and server pins are."""

    certificate: Path
    key: Path
    ca_bundle: Path
    pins: frozenset[str]

    @classmethod
    def from_directory(cls, directory: str | Path) -> TlsIdentity:
        """The identity `devices provision` wrote into `directory` (one device's)."""
        base = Path(directory)
        pins = frozenset(
            line.strip().lower() for line in (base / "server-pins.txt").read_text().splitlines() if line.strip()
        )
        if not pins:
            raise ValueError(f"{base / 'server-pins.txt'} names no server key pin")
        return cls(base / "device.pem", base / "device-key.pem", base / "ca.pem", pins)

    def context(self) -> ssl.SSLContext:
        """A client context: the server must chain to the device CA and match the host; our certificate is sent."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_bundle))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.certificate), str(self.key))
        return context


def spki_sha256(der_certificate: bytes) -> str:
    """sha256 hex of the certificate's SubjectPublicKeyInfo."""
    public = x509.load_der_x509_certificate(der_certificate).public_key()
    return hashlib.sha256(
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()


def pin_check(ssl_object: ssl.SSLObject | ssl.SSLSocket, pins: frozenset[str]) -> None:
    """Raise PinMismatch unless the peer's certificate carries a pinned key (call before sending anything)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der or spki_sha256(der) not in pins:
        raise PinMismatch(f"{PIN_MISMATCH}: the server's key is not pinned")


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, with the scheme's default port."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def origin_check(server: str, url: str) -> str | None:
    """None when `url` is relative or on the server's origin; else the foreign origin (never contacted)."""
    if not urllib.parse.urlsplit(url).scheme:
        return None
    if origin(url) == origin(server):
        return None
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"
