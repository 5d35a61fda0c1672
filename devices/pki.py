"""The device PKI: a root kept apart, an issuing intermediate, device and server certificates.

- **Root**: generated once (`python manage.py devices ca-init`), used only to sign the issuing intermediate, then
  discarded: its private key is never written anywhere. Rotating the intermediate means a new root (a ceremony);
  the CA bundle keeps the old roots until their devices have renewed.
- **Issuing intermediate**: EC P-256. Its private key lives in the PKCS#11 token (the server's, via
  ota_project.hsm) unless OTA_DEVICE_CA_KEY=file, the documented development fallback that keeps it in
  `DEVICE_PKI_DIR/intermediate-key.pem` (mode 0600). `cryptography` cannot sign with an external key, so a
  certificate is built by `cryptography`, its TBS part signed in the token (ECDSA P-256 over SHA-256) and the DER
  assembled here; the result is checked against the intermediate before it is returned.
- **Device certificates**: EC P-256 key made on the issuing side (the fleet's factory provisioning), the device's
  serial in the subject (CN and serialNumber), clientAuth only, short validity (OTA_DEVICE_CERT_DAYS, 90 by
  default). The sha256 of the DER certificate is the device's identity on the device API.
- **Server certificate** (nginx's on the device port): serverAuth only, from the same intermediate; the agent pins
  its public key (SPKI sha256), plus a backup key generated at the same time for rotation (`server-pins.txt`).

Every file is in DEVICE_PKI_DIR (default `.data/pki`), never committed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings
from pkcs11 import Mechanism, ObjectClass

from ota_project.hsm.public import KeyAlgorithm
from ota_project.hsm.token import token_key_generate, token_session

ROOT_DAYS = 3650
INTERMEDIATE_DAYS = 1825
SERVER_DAYS = 365
DEFAULT_DEVICE_DAYS = 90
MAX_DEVICE_DAYS = 397
BACKDATE = dt.timedelta(minutes=5)  # clock skew of devices whose clocks lag a little
# ecdsa-with-SHA256 AlgorithmIdentifier, DER (RFC 5758: parameters absent).
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


class PkiError(Exception):
    """The device CA is missing, damaged, or cannot sign (token unavailable)."""


@dataclass(frozen=True)
class PkiPaths:
    """Where the device PKI keeps its public parts and (file fallback) the issuing key."""

    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root.pem"

    @property
    def intermediate(self) -> Path:
        return self.directory / "intermediate.pem"

    @property
    def intermediate_key(self) -> Path:
        return self.directory / "intermediate-key.pem"

    @property
    def issuer(self) -> Path:
        return self.directory / "issuer.json"

    @property
    def bundle(self) -> Path:
        """What nginx verifies client certificates against (every root, and the intermediates)."""
        return self.directory / "ca-bundle.pem"

    @property
    def server_certificate(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def server_backup_key(self) -> Path:
        return self.directory / "server-key-backup.pem"

    @property
    def server_hosts(self) -> Path:
        return self.directory / "server-hosts.txt"

    @property
    def pins(self) -> Path:
        return self.directory / "server-pins.txt"


def pki_paths() -> PkiPaths:
    return PkiPaths(Path(getattr(settings, "DEVICE_PKI_DIR", Path(settings.DATA_DIR) / "pki")))


def device_certificate_days() -> int:
    """Validity of a device certificate (OTA_DEVICE_CERT_DAYS), between 1 day and 397."""
    return max(1, min(int(getattr(settings, "OTA_DEVICE_CERT_DAYS", DEFAULT_DEVICE_DAYS)), MAX_DEVICE_DAYS))


def certificate_fingerprint(der: bytes) -> str:
    """The device's identity: sha256 hex of its DER certificate (what the app computes from nginx's header)."""
    return hashlib.sha256(der).hexdigest()


def spki_pin(public_key: ec.EllipticCurvePublicKey) -> str:
    """sha256 hex of a public key's SubjectPublicKeyInfo (the agent's pin)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(staging, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    staging.write_bytes(data)
    os.replace(staging, path)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Issuer:
    """The issuing intermediate, able to sign certificates (in the token, or the file fallback)."""

    def __init__(self, certificate: x509.Certificate, *, key_id: str = "", key: ec.EllipticCurvePrivateKey | None):
        self.certificate = certificate
        self.key_id = key_id
        self.key = key
        self._token_key: Any = None  # the token's private key object while `issuer_open` holds the session

    @property
    def in_token(self) -> bool:
        return self.key is None

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign `builder` as this issuer; the result is checked to verify under the intermediate."""
        builder = builder.issuer_name(self.certificate.subject)
        if self.key is not None:
            certificate = builder.sign(self.key, hashes.SHA256())
        else:
            # The TBS part comes out of a certificate signed with a throwaway key of the same algorithm (its
            # AlgorithmIdentifier is the same), then gets the token's signature.
            draft = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
            tbs = draft.tbs_certificate_bytes
            signature = self._token_sign(tbs)
            der = _der(0x30, tbs + _ECDSA_SHA256 + _der(0x03, b"\x00" + signature))
            certificate = x509.load_der_x509_certificate(der)
        certificate.verify_directly_issued_by(self.certificate)
        return certificate

    def _token_sign(self, data: bytes) -> bytes:
        # SoftHSM has no combined hash-and-sign for ECDSA: hash here, sign the digest in the token (raw r || s).
        if self._token_key is None:
            raise PkiError("the issuer's token session is not open")
        raw: bytes = self._token_key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


@contextmanager
def issuer_open() -> Iterator[Issuer]:
    """The issuing intermediate, ready to sign (one token session for a whole batch)."""
    paths = pki_paths()
    try:
        certificate = x509.load_pem_x509_certificate(paths.intermediate.read_bytes())
        described = json.loads(paths.issuer.read_text())
    except (OSError, ValueError) as exc:
        raise PkiError(f"no device CA in {paths.directory}: run `python manage.py devices ca-init`") from exc
    if described.get("storage") == "file":
        try:
            key = serialization.load_pem_private_key(paths.intermediate_key.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise PkiError(f"the issuing key {paths.intermediate_key} cannot be read") from exc
        yield Issuer(certificate, key=cast(ec.EllipticCurvePrivateKey, key))
        return
    issuer = Issuer(certificate, key_id=str(described["key_id"]), key=None)
    with token_session() as session:
        try:
            issuer._token_key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(issuer.key_id))
        except Exception as exc:  # noqa: BLE001 - NoSuchKey, MultipleObjectsReturned: the CA is unusable
            raise PkiError(f"the issuing key {issuer.key_id} is not in the token") from exc
        yield issuer


def _ca_builder(
    subject: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int, path_length: int
) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


@dataclass(frozen=True)
class CaCreated:
    """What `ca_create` made: the fingerprints of the root and the intermediate, and where the issuing key is."""

    root_fingerprint: str
    intermediate_fingerprint: str
    storage: str
    key_id: str


def ca_create(*, storage: str, organisation: str = "OTA fleet") -> CaCreated:
    """Make a root and an issuing intermediate; the root's key signs the intermediate and is then forgotten.

    `storage`: "token" (the intermediate's key generated in the PKCS#11 token, never extractable) or "file" (the
    development fallback). The bundle keeps earlier roots (a rotation), so devices of the old CA still connect
    until they renew."""
    if storage not in ("token", "file"):
        raise PkiError(f"unknown key storage {storage!r}: token or file")
    paths = pki_paths()
    root_key = ec.generate_private_key(ec.SECP256R1())
    suffix = secrets.token_hex(4)
    root_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"OTA device root {suffix}"),
        ]
    )
    root_builder = _ca_builder(root_name, root_key.public_key(), ROOT_DAYS, 1).issuer_name(root_name)
    root = root_builder.sign(root_key, hashes.SHA256())
    intermediate_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"OTA device issuing CA {suffix}"),
        ]
    )
    key_id = ""
    file_key: ec.EllipticCurvePrivateKey | None = None
    if storage == "token":
        token_key = token_key_generate(
            label=f"{settings.PKCS11_LABEL_PREFIX}:device-ca-{suffix}", algorithm=KeyAlgorithm.ECDSA_P256
        )
        key_id = token_key.key_id
        public = serialization.load_pem_public_key(token_key.public_key_pem.encode())
    else:
        file_key = ec.generate_private_key(ec.SECP256R1())
        public = file_key.public_key()
    intermediate = (
        _ca_builder(intermediate_name, cast(ec.EllipticCurvePublicKey, public), INTERMEDIATE_DAYS, 0)
        .issuer_name(root_name)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    del root_key  # used only to sign the intermediate: never written anywhere
    previous_roots = paths.bundle.read_bytes() if paths.bundle.exists() else b""
    if file_key is not None:
        _write_private(paths.intermediate_key, _key_pem(file_key))
    elif paths.intermediate_key.exists():
        paths.intermediate_key.unlink()
    _write_public(paths.root, _pem(root))
    _write_public(paths.intermediate, _pem(intermediate))
    _write_public(paths.issuer, json.dumps({"storage": storage, "key_id": key_id}).encode())
    _write_public(paths.bundle, _pem(intermediate) + _pem(root) + _kept_roots(previous_roots))
    return CaCreated(
        root_fingerprint=certificate_fingerprint(root.public_bytes(serialization.Encoding.DER)),
        intermediate_fingerprint=certificate_fingerprint(intermediate.public_bytes(serialization.Encoding.DER)),
        storage=storage,
        key_id=key_id,
    )


def _kept_roots(bundle: bytes) -> bytes:
    """Earlier CAs still in the bundle (their unexpired certificates), so a rotation strands no device."""
    if not bundle:
        return b""
    kept = b""
    now = _now()
    for certificate in x509.load_pem_x509_certificates(bundle):
        if certificate.not_valid_after_utc > now:
            kept += _pem(certificate)
    return kept


@contextmanager
def ca_lock() -> Iterator[None]:
    """Serialise CA creation between processes starting together (`make run`'s nginx step and its fleet)."""
    import fcntl

    directory = pki_paths().directory
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".ca.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ca_exists() -> bool:
    paths = pki_paths()
    return paths.intermediate.exists() and paths.issuer.exists() and paths.bundle.exists()


def ca_ensure() -> None:
    """Create the device CA if there is none: in the token unless configured (prefer
    devices.certificates.device_ca_ensure, which records it)."""
    with ca_lock():
        if not ca_exists():
            ca_create(storage=str(getattr(settings, "OTA_DEVICE_CA_KEY", "token")))


@dataclass(frozen=True)
class DeviceKeyPair:
    """A freshly issued device identity: its private key and certificate (PEM), with the chain and fingerprint."""

    serial: str
    key_pem: bytes
    certificate_pem: bytes
    chain_pem: bytes  # the intermediate: the device presents it with its own certificate
    fingerprint: str
    serial_number: str
    not_before: dt.datetime
    not_after: dt.datetime


def device_certificate_make(issuer: Issuer, *, serial: str, days: int) -> DeviceKeyPair:
    """A new EC P-256 key and a clientAuth certificate naming the device serial, signed by the issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OTA fleet"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
            x509.NameAttribute(NameOID.COMMON_NAME, serial),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    certificate = issuer.sign(builder)
    return DeviceKeyPair(
        serial=serial,
        key_pem=_key_pem(key),
        certificate_pem=_pem(certificate),
        chain_pem=_pem(issuer.certificate),
        fingerprint=certificate_fingerprint(certificate.public_bytes(serialization.Encoding.DER)),
        serial_number=format(certificate.serial_number, "x"),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def server_certificate_ensure(*, hosts: Sequence[str], min_days_left: int = 30) -> list[str]:
    """nginx's certificate for the device port (issued again when it is missing, for other hosts, or expiring);
    returns the pins (SPKI sha256 of the key and of the backup key) the agents are given."""
    ca_ensure()
    paths = pki_paths()
    names = sorted(set(hosts))
    current = _server_certificate_current(paths, names, min_days_left)
    if current is None:
        key = _server_key(paths.server_key)
        _server_key(paths.server_backup_key)
        alternative: list[x509.GeneralName] = []
        for name in names:
            try:
                alternative.append(x509.IPAddress(ip_address(name)))
            except ValueError:
                alternative.append(x509.DNSName(name))
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        with issuer_open() as issuer:
            certificate = issuer.sign(builder)
            chain = _pem(certificate) + _pem(issuer.certificate)
        _write_public(paths.server_certificate, chain)
        _write_public(paths.server_hosts, ("\n".join(names) + "\n").encode())
    pins = server_pins()
    _write_public(paths.pins, ("\n".join(pins) + "\n").encode())
    return pins


def _server_certificate_current(paths: PkiPaths, names: list[str], min_days_left: int) -> x509.Certificate | None:
    try:
        certificate = x509.load_pem_x509_certificates(paths.server_certificate.read_bytes())[0]
        key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
        issuer = x509.load_pem_x509_certificate(paths.intermediate.read_bytes())
        certificate.verify_directly_issued_by(issuer)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # noqa: BLE001 - missing, unreadable, another CA's, no SAN: issue it again
        return None
    present = {str(value) for value in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )
    if not set(names) <= present or spki_pin(cast(ec.EllipticCurvePrivateKey, key).public_key()) != spki_pin(
        cast(ec.EllipticCurvePublicKey, certificate.public_key())
    ):
        return None
    if certificate.not_valid_after_utc - _now() < dt.timedelta(days=min_days_left):
        return None
    return certificate


def _server_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        return cast(ec.EllipticCurvePrivateKey, serialization.load_pem_private_key(path.read_bytes(), password=None))
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(path, _key_pem(key))
    return key


def server_pins() -> list[str]:
    """The pins of the server key and its backup (the agent accepts either)."""
    paths = pki_paths()
    return [spki_pin(_server_key(path).public_key()) for path in (paths.server_key, paths.server_backup_key)]


def server_key_rotate() -> list[str]:
    """Promote the backup server key (already pinned by every agent) and make a new backup; reissue the
    certificate. Agents provisioned before the rotation keep connecting; give them the new pins at renewal."""
    paths = pki_paths()
    if not paths.server_backup_key.exists():
        raise PkiError("no backup server key to promote")
    os.replace(paths.server_backup_key, paths.server_key)
    if paths.server_certificate.exists():
        paths.server_certificate.unlink()
    hosts = paths.server_hosts.read_text().split() if paths.server_hosts.exists() else ["127.0.0.1", "localhost"]
    return server_certificate_ensure(hosts=hosts)


def device_identity_write(directory: Path, issued: DeviceKeyPair, pins: list[str]) -> Path:
    """Write a device's identity where the agent reads it (`--identity-dir`): key (0600), certificate with its
    chain, the CA bundle it verifies the server with, and the server pins. Each file replaced whole."""
    target = directory / issued.serial
    target.mkdir(parents=True, exist_ok=True)
    files = {
        "device-key.pem": (issued.key_pem, 0o600),
        "device.pem": (issued.certificate_pem + issued.chain_pem, 0o644),
        "ca.pem": (pki_paths().bundle.read_bytes(), 0o644),
        "server-pins.txt": (("\n".join(pins) + "\n").encode(), 0o644),
    }
    for name, (data, mode) in files.items():
        staging = target / f".{name}.new"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(staging, target / name)
    return target
