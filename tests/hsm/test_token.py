"""The token layer on a real SoftHSM2 token: keys are made, found, used and destroyed, and never read out."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeReadOnly, AttributeSensitive

from ota_project.hsm.public import KeyAlgorithm, public_key_load, signature_verify, tuf_key_id, tuf_public_key
from ota_project.hsm.softhsm import softhsm_setup
from ota_project.hsm.token import (
    TokenConfig,
    TokenKeyNotFound,
    TokenPinRefused,
    server_token,
    token_key_destroy,
    token_key_generate,
    token_key_get,
    token_keys,
    token_session,
    token_sign,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _label() -> str:
    return f"test-token:{uuid.uuid4().hex}"


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_a_generated_key_is_found_by_label_and_id_and_signs_what_its_public_key_verifies(algorithm):
    label = _label()
    key = token_key_generate(label=label, algorithm=algorithm)

    assert token_keys(label=label) == [key] and token_key_get(key_id=key.key_id) == key
    assert key.algorithm == algorithm and public_key_load(key.public_key_pem)[0] == algorithm
    signature = token_sign(key_id=key.key_id, data=b"metadata")
    assert signature_verify(key.public_key_pem, b"metadata", signature)
    assert not signature_verify(key.public_key_pem, b"metadatA", signature)
    token_key_destroy(key_id=key.key_id)
    assert token_keys(label=label) == []


def test_ecdsa_signatures_are_der_over_the_sha256_hashed_on_the_host():
    key = token_key_generate(label=_label(), algorithm=KeyAlgorithm.ECDSA_P256)
    signature = token_sign(key_id=key.key_id, data=b"snapshot")

    r, s = decode_dss_signature(signature)  # DER: a SEQUENCE of r and s (raises on raw r||s)
    assert r > 0 and s > 0
    public = public_key_load(key.public_key_pem)[1]
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, b"snapshot", ec.ECDSA(hashes.SHA256()))  # what securesystemslib checks


def test_key_id_is_the_sha256_of_the_canonical_tuf_form_of_the_public_key():
    key = token_key_generate(label=_label(), algorithm=KeyAlgorithm.ED25519)
    tuf_form = tuf_public_key(key.public_key_pem)

    assert tuf_form["keytype"] == "ed25519" and tuf_form["scheme"] == "ed25519"
    assert len(bytes.fromhex(tuf_form["keyval"]["public"])) == 32
    canonical = '{"keytype":"ed25519","keyval":{"public":"' + tuf_form["keyval"]["public"] + '"},"scheme":"ed25519"}'
    assert key.key_id == tuf_key_id(key.public_key_pem) == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_private_key_cannot_be_read_out_of_the_token_or_made_extractable():
    key = token_key_generate(label=_label(), algorithm=KeyAlgorithm.ED25519)

    with token_session() as session:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(key.key_id))
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
        assert private[Attribute.ALWAYS_SENSITIVE] and private[Attribute.NEVER_EXTRACTABLE]
        with pytest.raises(AttributeSensitive):
            private[Attribute.VALUE]
        with pytest.raises(AttributeReadOnly):
            private[Attribute.EXTRACTABLE] = True
        with pytest.raises(AttributeSensitive):
            private[Attribute.VALUE]
    assert signature_verify(key.public_key_pem, b"still", token_sign(key_id=key.key_id, data=b"still"))


def test_a_wrong_pin_is_refused_and_the_right_one_still_works():
    key = token_key_generate(label=_label(), algorithm=KeyAlgorithm.ED25519)  # this process is logged in
    right = server_token()

    with pytest.raises(TokenPinRefused, match="refused the PIN"):
        token_keys(token=TokenConfig(right.module, right.token_label, "not-the-pin"))

    assert token_key_get(key_id=key.key_id) == key


def test_signing_with_a_destroyed_or_unknown_key_is_refused():
    key = token_key_generate(label=_label(), algorithm=KeyAlgorithm.ED25519)
    token_key_destroy(key_id=key.key_id)

    with pytest.raises(TokenKeyNotFound):
        token_sign(key_id=key.key_id, data=b"x")
    with pytest.raises(TokenKeyNotFound):
        token_key_get(key_id="00" * 32)


def test_softhsm_setup_is_idempotent_and_concurrent_setups_make_one_token(tmp_path):
    directory = tmp_path / "softhsm"
    script = "import sys; from ota_project.hsm.softhsm import softhsm_setup; softhsm_setup(__import__('pathlib').Path(sys.argv[1]), 'dev')"
    setups = [subprocess.Popen([sys.executable, "-c", script, str(directory)], cwd=REPO_ROOT) for _ in range(4)]
    assert [setup.wait(timeout=60) for setup in setups] == [0, 0, 0, 0]
    pin = (directory / "user.pin").read_text()

    token = softhsm_setup(directory, "dev")

    assert token.pin_file.read_text() == pin  # not re-initialised
    assert len(list((directory / "tokens").iterdir())) == 1
    for name in ("user.pin", "so.pin", "softhsm2.conf"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600
    slots = subprocess.run(
        ["softhsm2-util", "--show-slots"], env={"SOFTHSM2_CONF": str(token.conf)}, capture_output=True, text=True
    ).stdout
    assert slots.count("Label:            dev") == 1
