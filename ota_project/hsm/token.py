"""Keys in a PKCS#11 token: open a session, generate, find, sign with, export the public half of, destroy.

Private keys are generated inside the token as sensitive, non-extractable objects and never leave it: nothing here
reads private key material, and the token refuses to (AttributeSensitive). Every key pair carries a label (for a
role key "<settings.PKCS11_LABEL_PREFIX>:<role>", see `role_label`) and CKA_ID = the TUF key id of its public key
(ota_project.hsm.public), which pairs the private object with its public one.

The token is named by module path, token label and PIN (`TokenConfig`): the server's from settings
(OTA_PKCS11_MODULE, OTA_PKCS11_TOKEN, OTA_PKCS11_PIN or OTA_PKCS11_PIN_FILE), an offline one (root keys) from
OTA_PKCS11_OFFLINE_TOKEN / OTA_PKCS11_OFFLINE_PIN. One logged-in session per process and token is kept and used
under a lock (PKCS#11 login is per process, so a second login would not check its PIN); a different PIN closes it
first so the token itself judges that PIN. After a fork the library is re-initialised (sessions do not survive it).

ML-DSA-65 (hybrid post-quantum mode): SoftHSM2, like most tokens today, has no ML-DSA mechanism, so an ML-DSA key
cannot be generated or used inside it. Its private half (the 32-byte seed) is instead kept in the token WRAPPED:
encrypted with AES-256-GCM by the token's wrapping key (`<prefix>:ml-dsa-wrap`, generated in the token as sensitive
and never extractable), the key id as associated data, stored as a private data object of the token (label = the
role label, application "ota-ml-dsa:<key id>"). To sign, the token decrypts the seed into this process's memory for
that one signature. That is the honest limit of a token without ML-DSA: the seed is in host memory while it signs
(and in the generating process while it is made); the wrapping key never leaves the token, so a copy of the token's
files or of the database is not enough to sign. A token with ML-DSA (PKCS#11 3.2 CKM_ML_DSA, by module path) would
generate and sign inside instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from django.conf import settings
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import NoSuchToken, PinIncorrect, PinLenRange, PKCS11Error
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from ota_project.hsm.public import KeyAlgorithm, mldsa_message, public_key_pem, tuf_key_id

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Library

ED25519_OID = "1.3.101.112"
MLDSA_APPLICATION = "ota-ml-dsa:"  # + key id: the data object holding a wrapped ML-DSA key
WRAPPING_KEY_ROLE = "ml-dsa-wrap"  # label "<prefix>:ml-dsa-wrap": the AES key that wraps ML-DSA seeds
_GCM_TAG_BITS = 128
logger = logging.getLogger(__name__)

_CURVE = {KeyAlgorithm.ED25519: ED25519_OID, KeyAlgorithm.ECDSA_P256: "secp256r1"}
_KEY_TYPE = {KeyAlgorithm.ED25519: KeyType.EC_EDWARDS, KeyAlgorithm.ECDSA_P256: KeyType.EC}
_GENERATE = {
    KeyAlgorithm.ED25519: Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
    KeyAlgorithm.ECDSA_P256: Mechanism.EC_KEY_PAIR_GEN,
}


class TokenError(Exception):
    """The token could not do what was asked (not configured, unreachable, no such key)."""


class TokenPinRefused(TokenError):
    """The token refused the PIN: a wrong PIN, worth a security event when a person or an API supplied it."""


class TokenKeyNotFound(TokenError):
    """No key with that id (or label) in the token."""


@dataclass(frozen=True)
class TokenConfig:
    """Which token: PKCS#11 module path, token label, user PIN (never shown in repr or logs)."""

    module: str
    token_label: str
    pin: str = field(repr=False)


@dataclass(frozen=True)
class TokenKey:
    """A key pair in a token as the rest of the system sees it: never more than its public half."""

    label: str
    key_id: str
    algorithm: KeyAlgorithm
    public_key_pem: str


# The PIN file as last read, by path and modification time: every decision record is signed, and reading the file
# each time would cost more than a lookup in the token.
_pin_file_read: tuple[tuple[str, int], str] | None = None


def _pin_from_file(path: Path) -> str:
    global _pin_file_read
    try:
        identity = (str(path), path.stat().st_mtime_ns)
        if _pin_file_read is None or _pin_file_read[0] != identity:
            if path.stat().st_mode & 0o077:
                logger.warning("PIN file %s is readable by group or others; it should be mode 0600", path)
            _pin_file_read = (identity, path.read_text().strip())
    except OSError as exc:
        raise TokenError(
            f"no PIN for token {settings.PKCS11_TOKEN!r}: set OTA_PKCS11_PIN or OTA_PKCS11_PIN_FILE "
            f"({path}: {exc.strerror}); in development run `python manage.py softhsm_setup`"
        ) from exc
    return _pin_file_read[1]


def server_token() -> TokenConfig:
    """The server's token from settings; the PIN from OTA_PKCS11_PIN, else the PIN file (mode 0600)."""
    pin = settings.PKCS11_PIN or _pin_from_file(Path(settings.PKCS11_PIN_FILE))
    return TokenConfig(settings.PKCS11_MODULE, settings.PKCS11_TOKEN, pin)


def offline_token() -> TokenConfig:
    """The offline token of a key ceremony (OTA_PKCS11_OFFLINE_TOKEN/PIN); refused when unset or the server's."""
    label = settings.PKCS11_OFFLINE_TOKEN
    if not label or not settings.PKCS11_OFFLINE_PIN:
        raise TokenError("no offline token: set OTA_PKCS11_OFFLINE_TOKEN and OTA_PKCS11_OFFLINE_PIN")
    if label == settings.PKCS11_TOKEN:
        raise TokenError(f"the offline token {label!r} is the server's token (OTA_PKCS11_TOKEN); use another token")
    return TokenConfig(settings.PKCS11_MODULE, label, settings.PKCS11_OFFLINE_PIN)


def role_label(role: str) -> str:
    """The token label of a role's key: "<prefix>:<role>" (the prefix lets deployments share a token)."""
    return f"{settings.PKCS11_LABEL_PREFIX}:{role}"


# Guards the library and the open sessions: a PKCS#11 session must not be used by two threads at once.
_lock = threading.RLock()
_libraries: dict[str, Library] = {}
_library_pid: dict[str, int] = {}
_sessions: dict[tuple[str, str], tuple[str, pkcs11.Session]] = {}


def _library(module: str) -> Library:
    # SoftHSM2 finds its token directory through SOFTHSM2_CONF, read when the library initialises.
    os.environ.setdefault("SOFTHSM2_CONF", str(settings.SOFTHSM2_CONF))
    library = _libraries.get(module)
    if library is None:
        try:
            library = pkcs11.lib(module)
        except (RuntimeError, OSError) as exc:
            raise TokenError(f"cannot load the PKCS#11 module {module}: {exc}") from exc
        _libraries[module], _library_pid[module] = library, os.getpid()
    elif _library_pid[module] != os.getpid():
        library.reinitialize()  # a forked child: the parent's sessions are not ours
        _library_pid[module] = os.getpid()
        for name in [name for name in _sessions if name[0] == module]:
            del _sessions[name]
    return library


def _open(token: TokenConfig) -> pkcs11.Session:
    library = _library(token.module)
    name = (token.module, token.token_label)
    cached = _sessions.get(name)
    if cached is not None:
        if hmac.compare_digest(cached[0], token.pin):
            return cached[1]
        # Another PIN for a token this process is logged in to: log out first, so the token checks this one.
        del _sessions[name]
        cached[1].close()
    try:
        session = library.get_token(token_label=token.token_label).open(user_pin=token.pin, rw=True)
    except (PinIncorrect, PinLenRange) as exc:
        raise TokenPinRefused(f"token {token.token_label!r} refused the PIN") from exc
    except NoSuchToken as exc:
        raise TokenError(f"no token labelled {token.token_label!r} in {token.module}") from exc
    except PKCS11Error as exc:
        raise TokenError(f"cannot open token {token.token_label!r}: {type(exc).__name__}") from exc
    _sessions[name] = (token.pin, session)
    return session


@contextmanager
def token_session(token: TokenConfig | None = None) -> Iterator[pkcs11.Session]:
    """A logged-in read-write session on `token` (the server's by default), held exclusively while in use."""
    config = token or server_token()
    with _lock:
        session = _open(config)
        try:
            yield session
        except PKCS11Error as exc:
            raise TokenError(f"token {config.token_label!r}: {type(exc).__name__}") from exc


def _public_pem(public: pkcs11.PublicKey) -> tuple[KeyAlgorithm, str]:
    if public.key_type == KeyType.EC_EDWARDS:
        point = bytes(public[Attribute.EC_POINT])
        # SoftHSM keeps the point DER-wrapped (OCTET STRING, 04 20 ...); some tokens keep the raw 32 bytes.
        raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point
        return KeyAlgorithm.ED25519, public_key_pem(Ed25519PublicKey.from_public_bytes(raw))
    der = encode_ec_public_key(public)
    key = serialization.load_der_public_key(der)
    return KeyAlgorithm.ECDSA_P256, key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _token_key(public: pkcs11.PublicKey) -> TokenKey:
    algorithm, pem = _public_pem(public)
    return TokenKey(label=str(public.label), key_id=tuf_key_id(pem), algorithm=algorithm, public_key_pem=pem)


def token_key_generate(*, label: str, algorithm: KeyAlgorithm, token: TokenConfig | None = None) -> TokenKey:
    """Generate a key pair inside the token: private half sensitive and never extractable, CKA_ID = its key id.
    ML-DSA-65 (no token mechanism): generated here, its seed kept in the token wrapped by the token's AES key."""
    if algorithm == KeyAlgorithm.ML_DSA_65:
        return _mldsa_generate(label=label, token=token)
    with token_session(token) as session:
        parameters = session.create_domain_parameters(
            _KEY_TYPE[algorithm], {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE[algorithm])}, local=True
        )
        public, private = parameters.generate_keypair(
            mechanism=_GENERATE[algorithm],
            store=True,
            label=label,
            public_template={Attribute.VERIFY: True},
            private_template={
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.PRIVATE: True,
            },
        )
        key = _token_key(public)
        try:
            public[Attribute.ID] = private[Attribute.ID] = bytes.fromhex(key.key_id)
        except PKCS11Error:
            private.destroy()
            public.destroy()
            raise
        return key


def token_keys(*, label: str | None = None, token: TokenConfig | None = None) -> list[TokenKey]:
    """Keys in the token (with that label when given) whose private half is there, sorted by key id."""
    template: dict[Attribute, object] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
    if label is not None:
        template[Attribute.LABEL] = label
    with token_session(token) as session:
        private_ids = {bytes(obj[Attribute.ID]) for obj in session.get_objects(template)}
        template[Attribute.CLASS] = ObjectClass.PUBLIC_KEY
        keys = [
            _token_key(cast(pkcs11.PublicKey, obj))
            for obj in session.get_objects(template)
            if bytes(obj[Attribute.ID]) in private_ids
        ]
        keys += [key for key, _ in _mldsa_objects(session, label=label)]
    return sorted(keys, key=lambda key: key.key_id)


def token_key_get(*, key_id: str, token: TokenConfig | None = None) -> TokenKey:
    """The key with this id; TokenKeyNotFound when its private half is not in the token."""
    with token_session(token) as session:
        wrapped = _mldsa_objects(session, key_id=key_id)
        if wrapped:
            return wrapped[0][0]
        try:
            session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(key_id))
            public = cast(
                pkcs11.PublicKey, session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=bytes.fromhex(key_id))
            )
        except (pkcs11.NoSuchKey, ValueError) as exc:
            raise TokenKeyNotFound(f"no key {key_id} in the token") from exc
        return _token_key(public)


def token_sign(*, key_id: str, data: bytes, token: TokenConfig | None = None) -> bytes:
    """Sign `data` in the token: Ed25519 (raw 64 bytes), or ECDSA P-256 over SHA-256 hashed here (DER); ML-DSA-65
    over TAP 21's `mldsa_message(data)`, with the seed the token unwraps for this one signature."""
    with token_session(token) as session:
        try:
            private = cast(
                pkcs11.SignMixin, session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(key_id))
            )
        except (pkcs11.NoSuchKey, ValueError) as exc:
            wrapped = _mldsa_objects(session, key_id=key_id) if isinstance(exc, pkcs11.NoSuchKey) else []
            if wrapped:  # an ML-DSA key: no private key object, its wrapped seed instead
                return _mldsa_sign(session, wrapped[0], data)
            raise TokenKeyNotFound(f"no private key {key_id} in the token") from exc
        if private.key_type == KeyType.EC_EDWARDS:
            return private.sign(data, mechanism=Mechanism.EDDSA)
        raw = private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def token_key_destroy(*, key_id: str, token: TokenConfig | None = None) -> None:
    """Destroy both halves of the key (the public half stays wherever it was recorded); no-op when absent."""
    with token_session(token) as session:
        for obj in list(session.get_objects({Attribute.ID: bytes.fromhex(key_id)})):
            obj.destroy()
        for obj in list(
            session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: MLDSA_APPLICATION + key_id})
        ):
            obj.destroy()


def _wrapping_key(session: pkcs11.Session) -> pkcs11.SecretKey:
    """The token's AES-256 key that wraps ML-DSA seeds: made in the token once, sensitive, never extractable."""
    label = role_label(WRAPPING_KEY_ROLE)
    found = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}))
    if found:
        return cast(pkcs11.SecretKey, found[0])
    return session.generate_key(
        KeyType.AES,
        256,
        label=label,
        store=True,
        template={
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
            Attribute.PRIVATE: True,
        },
    )


def _mldsa_objects(
    session: pkcs11.Session, *, label: str | None = None, key_id: str | None = None
) -> list[tuple[TokenKey, dict[str, str]]]:
    """The token's wrapped ML-DSA keys (with that label, or that key id): the key and its stored envelope."""
    template: dict[Attribute, object] = {Attribute.CLASS: ObjectClass.DATA}
    if label is not None:
        template[Attribute.LABEL] = label
    if key_id is not None:
        template[Attribute.APPLICATION] = MLDSA_APPLICATION + key_id
    found = []
    for obj in session.get_objects(template):
        application = str(obj[Attribute.APPLICATION])
        if not application.startswith(MLDSA_APPLICATION):
            continue
        envelope = json.loads(bytes(obj[Attribute.VALUE]))
        key = TokenKey(
            label=str(obj[Attribute.LABEL]),
            key_id=application.removeprefix(MLDSA_APPLICATION),
            algorithm=KeyAlgorithm.ML_DSA_65,
            public_key_pem=envelope["public_key_pem"],
        )
        found.append((key, envelope))
    return found


def _mldsa_generate(*, label: str, token: TokenConfig | None) -> TokenKey:
    private = MLDSA65PrivateKey.generate()
    pem = public_key_pem(private.public_key())
    key = TokenKey(label=label, key_id=tuf_key_id(pem), algorithm=KeyAlgorithm.ML_DSA_65, public_key_pem=pem)
    nonce = secrets.token_bytes(12)
    with token_session(token) as session:
        wrapped = cast(pkcs11.EncryptMixin, _wrapping_key(session)).encrypt(
            private.private_bytes_raw(),
            mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(nonce, bytes.fromhex(key.key_id), _GCM_TAG_BITS),
        )
        envelope = {"public_key_pem": pem, "nonce": nonce.hex(), "wrapped_seed": cast(bytes, wrapped).hex()}
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.MODIFIABLE: False,
                Attribute.LABEL: label,
                Attribute.APPLICATION: MLDSA_APPLICATION + key.key_id,
                Attribute.VALUE: json.dumps(envelope).encode(),
            }
        )
    del private
    return key


def _mldsa_sign(session: pkcs11.Session, wrapped: tuple[TokenKey, dict[str, str]], data: bytes) -> bytes:
    key, envelope = wrapped
    # The token authenticates the envelope (GCM, key id as associated data): a swapped or edited blob is refused.
    seed = cast(pkcs11.DecryptMixin, _wrapping_key(session)).decrypt(
        bytes.fromhex(envelope["wrapped_seed"]),
        mechanism=Mechanism.AES_GCM,
        mechanism_param=GCMParams(bytes.fromhex(envelope["nonce"]), bytes.fromhex(key.key_id), _GCM_TAG_BITS),
    )
    private = MLDSA65PrivateKey.from_seed_bytes(cast(bytes, seed))
    if public_key_pem(private.public_key()) != key.public_key_pem:
        raise TokenError(f"the wrapped ML-DSA key {key.key_id} does not match its public key")
    signature = private.sign(mldsa_message(data))
    del private, seed
    return signature
