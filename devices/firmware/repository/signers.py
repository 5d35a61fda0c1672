"""securesystemslib signers whose private keys stay in a PKCS#11 token: the metadata hands them the canonical bytes
and gets back a signature made inside the token.

`role_signer(role)` signs with the registry's active key of a role on the server's token (targets, snapshot,
timestamp); `token_key_signer(key, token)` with a key of a given token, e.g. the offline token of a key ceremony (root).
"""

from __future__ import annotations

from collections.abc import Callable

from securesystemslib.signer import Key, SecretsHandler, Signature, Signer, SSlibKey

from devices.firmware.keys.choices import KeyLocation, KeyState
from devices.firmware.keys.models import SigningKey
from devices.firmware.keys.selectors import signing_key_active
from devices.firmware.keys.services import role_sign
from ota_project.errors import Conflict
from ota_project.hsm.public import tuf_public_key
from ota_project.hsm.token import TokenConfig, TokenKey, token_sign

URI_SCHEME = "ota-hsm-role"


def tuf_key(key: SigningKey | TokenKey) -> SSlibKey:
    """A registry or token key in TUF form, under its key id (the sha256 of that form, as the registry shows it)."""
    form = tuf_public_key(key.public_key_pem)
    return SSlibKey(key.key_id, form["keytype"], form["scheme"], form["keyval"])


class TokenSigner(Signer):
    """Signs with a key whose private half never leaves its token; `sign` returns the token's signature."""

    def __init__(self, public_key: SSlibKey, sign: Callable[[bytes], bytes]) -> None:
        self._public_key = public_key
        self._sign = sign

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: SecretsHandler | None = None
    ) -> TokenSigner:
        """`ota-hsm-role:<role>`: the active key of that role on the server's token (it must be `public_key`)."""
        scheme, _, role = priv_key_uri.partition(":")
        if scheme != URI_SCHEME:
            raise ValueError(f"not an {URI_SCHEME}: URI: {priv_key_uri!r}")
        signer = role_signer(role)
        if signer.public_key.keyid != public_key.keyid:
            raise ValueError(f"the active {role} key is {signer.public_key.keyid}, not {public_key.keyid}")
        return signer

    @property
    def public_key(self) -> SSlibKey:
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._public_key.keyid, self._sign(payload).hex())


def role_signer(role: str) -> TokenSigner:
    """A signer for the active key of `role` on the server's token (refused when the role has none, or it is offline)."""
    key = signing_key_active(role)
    if key is None:
        raise Conflict(f"Role {role} has no active key.", fields={"role": ["No active key."]})

    def sign(payload: bytes) -> bytes:
        signing_key, signature = role_sign(role=role, data=payload)
        if signing_key.key_id != key.key_id:  # rotated between the two reads: the metadata names the old key
            raise Conflict(f"The {role} key changed while signing; try again.")
        return signature

    return TokenSigner(tuf_key(key), sign)


def token_key_signer(key: TokenKey, token: TokenConfig) -> TokenSigner:
    """A signer for a key of `token` (the offline token of a key ceremony: no registry, no database needed)."""
    return TokenSigner(tuf_key(key), lambda payload: token_sign(key_id=key.key_id, data=payload, token=token))


def root_named_signer(role: str, named_key_ids: set[str]) -> TokenSigner:
    """A signer for the key of `role` that the published root names: the active key when the root names it, else a
    retired key of the role still in the server's token (a planned rotation before the new root is signed). Refused
    (`key_not_in_root`) when the root names no key of the role this server can sign with (e.g. it was revoked)."""
    candidates = SigningKey.objects.filter(
        role=role, key_id__in=named_key_ids, state__in=[KeyState.ACTIVE, KeyState.RETIRED]
    ).order_by("state", "-created_at")  # "active" sorts before "retired"
    key = next((key for key in candidates if key.location == KeyLocation.SERVER_TOKEN), None)
    if key is None:
        raise Conflict(
            f"The published root names no {role} key this server can sign with; sign a new root that names the "
            f"active {role} key (image_repository rotate-root).",
            code="key_not_in_root",
        )
    signing_key = key
    return TokenSigner(tuf_key(signing_key), lambda payload: token_sign(key_id=signing_key.key_id, data=payload))
