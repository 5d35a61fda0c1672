"""The vehicle's own verifier raises python-tuf's metadata size limits for a hybrid (ML-DSA-65) image repository,
as its trusted root says it is, and keeps the tight classical ones otherwise (devices.agent.tuf_limits): hybrid
metadata the server may publish (up to the hybrid limits) verifies on the vehicle, the same size is refused from a
classical repository, and every metadata GET is bounded by its role's limit. Metadata built with python-tuf in the
server's shape (consistent snapshots, two targets keys, custom fields), fed to `Verifier.verify_offer` directly."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from devices.agent.tuf_limits import CLASSICAL_LIMITS, HYBRID_LIMITS, limit_for_file
from devices.agent.verify import FetchBytes, Trust, UntrustedUpdate, Verifier

SERIAL, HARDWARE, PATH = "TCU-HYBRID-1", "tcu-5g-r1", "2.0.0/tcu-2.0.0.bin"
IMAGE = b"\x5a" * 100_000


def _ml_dsa() -> Signer:
    return CryptoSigner(MLDSA65PrivateKey.generate())


def _repositories(*, hybrid: bool, timestamp_ml_dsa_keys: int = 1, timestamp_padding: int = 0) -> dict[str, Any]:
    """Image repository (each role: Ed25519, plus ML-DSA-65 when hybrid, all required) and the director's root and
    per-device targets. The timestamp may carry more ML-DSA keys (a rotation's overlap) or a padding field."""
    now = datetime.now(UTC).replace(microsecond=0)
    counts = {"root": 1, "targets": 2, "snapshot": 1, "timestamp": 1}
    signers: dict[str, list[Signer]] = {
        role: [CryptoSigner.generate_ed25519() for _ in range(count)] for role, count in counts.items()
    }
    if hybrid:
        for role in signers:
            signers[role] += [_ml_dsa() for _ in range(timestamp_ml_dsa_keys if role == "timestamp" else 1)]
    root = Root(expires=now + timedelta(days=365), consistent_snapshot=True)
    for role, role_signers in signers.items():
        for signer in role_signers:
            root.add_key(signer.public_key, role)
        root.roles[role].threshold = len(role_signers)

    def signed(part: Any, role: str) -> bytes:
        metadata = Metadata(part)
        for signer in signers[role]:
            metadata.sign(signer, append=True)
        return metadata.to_bytes()

    sha = hashlib.sha256(IMAGE).hexdigest()
    custom = {"hardware_ids": [HARDWARE], "release_counter": 4}
    target = TargetFile(length=len(IMAGE), hashes={"sha256": sha}, path=PATH, unrecognized_fields={"custom": custom})
    targets = signed(Targets(version=3, expires=now + timedelta(days=30), targets={PATH: target}), "targets")
    snapshot = signed(
        Snapshot(version=5, expires=now + timedelta(days=7), meta={"targets.json": MetaFile(version=3)}), "snapshot"
    )
    timestamp_part = Timestamp(
        version=6,
        expires=now + timedelta(days=1),
        snapshot_meta=MetaFile(
            version=5, length=len(snapshot), hashes={"sha256": hashlib.sha256(snapshot).hexdigest()}
        ),
    )
    if timestamp_padding:
        timestamp_part.unrecognized_fields["padding"] = "x" * timestamp_padding
    director_root_key, director_key = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    director_root = Root(expires=now + timedelta(days=365), consistent_snapshot=True)
    director_root.add_key(director_root_key.public_key, "root")
    director_root.add_key(director_key.public_key, "targets")
    director_root_md = Metadata(director_root)
    director_root_md.sign(director_root_key)
    director_custom = {
        **custom,
        "device_serial": SERIAL,
        "hardware_id": HARDWARE,
        "deployment_id": 9,
        "nonce": "ab" * 16,
    }
    director_custom.pop("hardware_ids")
    director_target = TargetFile(
        length=len(IMAGE), hashes={"sha256": sha}, path=PATH, unrecognized_fields={"custom": director_custom}
    )
    director = Metadata(Targets(version=1, expires=now + timedelta(hours=1), targets={PATH: director_target}))
    director.sign(director_key)
    return {
        "root": signed(root, "root"),
        "director_root": director_root_md.to_bytes(),
        "files": {
            "/m/metadata/2.root.json": None,
            "/m/metadata/timestamp.json": signed(timestamp_part, "timestamp"),
            "/m/metadata/5.snapshot.json": snapshot,
            "/m/metadata/3.targets.json": targets,
        },
        "offer": {
            "deployment_id": 9,
            "artifact": {"sha256": sha, "length": len(IMAGE)},
            "director": director.to_bytes().decode(),
        },
    }


def _verify(repos: dict[str, Any], state_dir: Path) -> tuple[Any, list[FetchBytes]]:
    """Drive the verifier as the agent does, answering each GET from `repos`; returns (result, the GETs asked)."""
    trust = Trust(SERIAL, HARDWARE, repos["root"], repos["director_root"], image_repository_url="/m/")
    verification = Verifier(state_dir, trust).verify_offer(repos["offer"], committed_counter=1, now=datetime.now(UTC))
    asked: list[FetchBytes] = []
    try:
        request = next(verification)
        while True:
            asked.append(request)
            request = verification.send(repos["files"][request.url])
    except StopIteration as done:
        return done.value, asked


def test_hybrid_metadata_over_the_classical_limits_verifies_on_a_hybrid_vehicle(tmp_path):
    # A timestamp signed during a rotation's overlap (Ed25519 + three ML-DSA-65 keys): over 16 KiB, under 64 KiB.
    repos = _repositories(hybrid=True, timestamp_ml_dsa_keys=3)
    size = len(repos["files"]["/m/metadata/timestamp.json"])
    assert CLASSICAL_LIMITS.timestamp_max_length < size < HYBRID_LIMITS.timestamp_max_length
    verified, asked = _verify(repos, tmp_path / "vehicle")
    assert verified.path == PATH and verified.release_counter == 4
    limits = {request.url.rsplit("/", 1)[-1]: request.max_length for request in asked}
    assert limits["timestamp.json"] == HYBRID_LIMITS.timestamp_max_length
    assert limits["5.snapshot.json"] == HYBRID_LIMITS.snapshot_max_length
    assert limits["3.targets.json"] == HYBRID_LIMITS.targets_max_length
    assert limits["2.root.json"] == HYBRID_LIMITS.root_max_length


def test_a_classical_vehicle_keeps_the_tight_limits_and_refuses_an_oversized_timestamp(tmp_path):
    fine, asked = _verify(_repositories(hybrid=False), tmp_path / "fine")
    assert fine.path == PATH
    assert {request.max_length for request in asked if request.url.endswith("timestamp.json")} == {
        CLASSICAL_LIMITS.timestamp_max_length
    }
    # The same size as the hybrid one above, validly signed, from a classical repository: refused, nothing trusted.
    padded = _repositories(hybrid=False, timestamp_padding=CLASSICAL_LIMITS.timestamp_max_length)
    with pytest.raises(UntrustedUpdate) as refused:
        _verify(padded, tmp_path / "padded")
    assert refused.value.check == "image_metadata" and "DownloadLengthMismatchError" in str(refused.value)
    assert not (tmp_path / "padded" / "tuf" / "image" / "timestamp.json").exists()


@pytest.mark.parametrize(
    ("filename", "role"),
    [
        ("2.root.json", "root"),
        ("timestamp.json", "timestamp"),
        ("9.snapshot.json", "snapshot"),
        ("7.targets.json", "targets"),
    ],
)
def test_each_metadata_file_is_bounded_by_its_role_s_limit(filename, role):
    for limits in (CLASSICAL_LIMITS, HYBRID_LIMITS):
        assert limit_for_file(limits, f"/repository/image/metadata/{filename}") == getattr(limits, f"{role}_max_length")
