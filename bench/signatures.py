"""What full verification of the image repository costs a vehicle, classical vs hybrid (not a test).

One "update check" is python-tuf's ngclient refreshing the top-level metadata of the image repository from its
root alone (root, timestamp, snapshot, targets; every signature checked against the root's keys and thresholds)
over local files (a fetcher that reads the published tree: no network, no server in the figure), measured as the
process CPU time of `Updater.refresh()`. Next to it, in the same run, the raw signature checks that refresh needs
(`cryptography` verifying each signature over bytes of the same size), so the ratio shows what python-tuf adds.

The repositories are laid out as devices.firmware.repository lays them out (same roles, thresholds = all keys,
targets with 2 classical keys, consistent snapshots, the same JSON serializer, 50 targets with the custom fields),
signed here with in-memory keys, since the figure is the vehicle's: ed25519, ecdsa-p256 and hybrid (Ed25519 +
ML-DSA-65 on every role; limits from devices.agent.tuf_limits).

    python -m bench.signatures [--checks 200]      (or: make bench-signatures)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from devices.agent.tuf_limits import HYBRID_SCHEME, updater_config_kwargs
from ota_project.hsm.public import mldsa_message

ROLES = ("root", "targets", "snapshot", "timestamp")
CLASSICAL_KEYS = {"root": 1, "targets": 2, "snapshot": 1, "timestamp": 1}
SERIALIZER = JSONSerializer(compact=False)


def _classical(algorithm: str) -> Callable[[], Signer]:
    if algorithm == "ed25519":
        return lambda: CryptoSigner(Ed25519PrivateKey.generate())
    return lambda: CryptoSigner(ec.generate_private_key(ec.SECP256R1()))


def build(directory: Path, algorithm: str, hybrid: bool, targets_count: int) -> None:
    """Write root, targets, snapshot and timestamp (consistent snapshots) for this scheme into directory."""
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    signers: dict[str, list[Signer]] = {
        role: [_classical(algorithm)() for _ in range(count)] for role, count in CLASSICAL_KEYS.items()
    }
    if hybrid:
        for role in ROLES:
            signers[role].append(CryptoSigner(MLDSA65PrivateKey.generate()))
    root = Root(expires=expires, consistent_snapshot=True)
    for role in ROLES:
        for signer in signers[role]:
            root.add_key(signer.public_key, role)
        root.roles[role].threshold = len(signers[role])
    targets = Targets(expires=expires)
    for index in range(targets_count):
        path = f"1.{index}.0/tcu-1.{index}.0.bin"
        targets.targets[path] = TargetFile(
            length=48_000_000,
            hashes={"sha256": f"{index:064x}"},
            path=path,
            unrecognized_fields={"custom": {"hardware_ids": ["tcu-4g-r2"], "release_counter": index}},
        )

    def signed(signed_part: Any, role: str) -> bytes:
        metadata = Metadata(signed_part)
        for signer in signers[role]:
            metadata.sign(signer, append=True)
        return metadata.to_bytes(SERIALIZER)

    (directory / "metadata").mkdir(parents=True)
    root_bytes = signed(root, "root")
    targets_bytes = signed(targets, "targets")
    snapshot_bytes = signed(Snapshot(expires=expires, meta={"targets.json": MetaFile(version=1)}), "snapshot")
    snapshot_hash = {"sha256": hashlib.sha256(snapshot_bytes).hexdigest()}
    timestamp = Timestamp(
        expires=expires, snapshot_meta=MetaFile(version=1, length=len(snapshot_bytes), hashes=snapshot_hash)
    )
    files = {
        "1.root.json": root_bytes,
        "1.targets.json": targets_bytes,
        "1.snapshot.json": snapshot_bytes,
        "timestamp.json": signed(timestamp, "timestamp"),
    }
    for name, data in files.items():
        (directory / "metadata" / name).write_bytes(data)


class LocalFetcher(FetcherInterface):
    """ngclient's downloads served from the published tree on disk (URL path = file path below the base)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = self.directory / url.removeprefix("file://local/")
        if not path.is_file():
            raise DownloadHTTPError(f"{url} not found", 404)
        return iter([path.read_bytes()])


def refresh_cpu_ms(directory: Path, config: UpdaterConfig, checks: int) -> list[float]:
    """CPU milliseconds of one full top-level refresh from the root alone, `checks` times (fresh client each time)."""
    root = (directory / "metadata" / "1.root.json").read_bytes()
    fetcher = LocalFetcher(directory)
    samples = []
    with tempfile.TemporaryDirectory() as work:
        for index in range(checks):
            client_dir = Path(work) / str(index)
            client_dir.mkdir()
            updater = Updater(
                metadata_dir=str(client_dir),
                metadata_base_url="file://local/metadata/",
                target_base_url="file://local/targets/",
                fetcher=fetcher,
                config=config,
                bootstrap=root,
            )
            start = time.process_time()
            updater.refresh()
            samples.append((time.process_time() - start) * 1000)
    return samples


def _verify(keytype: str, public: Any, signature: bytes, payload: bytes) -> None:
    if keytype == "ml-dsa":
        public.verify(signature, mldsa_message(payload))  # TAP 21: over b"tuf" + 1 + SHA-512(payload)
    elif keytype == "ecdsa":
        public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(signature, payload)


def raw_checks_ms(directory: Path, checks: int) -> float:
    """CPU milliseconds of the bare signature checks one refresh needs (each signature of each file, once)."""
    jobs: list[tuple[str, Any, bytes, bytes]] = []
    root = Metadata[Root].from_bytes((directory / "metadata" / "1.root.json").read_bytes()).signed
    for name in ("1.root.json", "timestamp.json", "1.snapshot.json", "1.targets.json"):
        metadata = Metadata.from_bytes((directory / "metadata" / name).read_bytes())
        payload = metadata.signed_bytes
        for keyid, signature in metadata.signatures.items():
            key = root.keys[keyid]
            text = key.keyval["public"]
            public = (
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
                if key.keytype == "ed25519"
                else load_pem_public_key(text.encode())
            )
            jobs.append((key.keytype, public, bytes.fromhex(signature.signature), payload))
    samples = []
    for _ in range(checks):
        start = time.process_time()
        for job in jobs:
            _verify(*job)
        samples.append((time.process_time() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=200, help="Refreshes per scheme (default 200).")
    parser.add_argument("--targets", type=int, default=50, help="Targets listed (default 50).")
    parser.add_argument("--out", type=Path, help="Also write the JSON result here.")
    options = parser.parse_args()
    results: dict[str, Any] = {
        "benchmark": "signatures",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "checks": options.checks,
        "load_average_before": [round(value, 2) for value in os.getloadavg()],
        "schemes": {},
    }
    with tempfile.TemporaryDirectory() as work:
        for scheme, algorithm, hybrid in (
            ("ed25519", "ed25519", False),
            ("ecdsa-p256", "ecdsa-p256", False),
            ("hybrid ed25519+ml-dsa-65", "ed25519", True),
            ("hybrid ecdsa-p256+ml-dsa-65", "ecdsa-p256", True),
        ):
            directory = Path(work) / scheme.replace(" ", "_").replace("+", "_")
            build(directory, algorithm, hybrid, options.targets)
            config = UpdaterConfig(**updater_config_kwargs(HYBRID_SCHEME if hybrid else algorithm))  # type: ignore[arg-type]
            refresh = refresh_cpu_ms(directory, config, options.checks)
            raw = raw_checks_ms(directory, options.checks)
            sizes = {path.name: path.stat().st_size for path in sorted((directory / "metadata").iterdir())}
            results["schemes"][scheme] = {
                "refresh_cpu_ms_median": round(statistics.median(refresh), 3),
                "refresh_cpu_ms_p95": round(sorted(refresh)[int(len(refresh) * 0.95) - 1], 3),
                "raw_signature_checks_ms": round(raw, 3),
                "refresh_over_raw": round(statistics.median(refresh) / raw, 2),
                "metadata_bytes": sizes,
            }
    results["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    baseline = results["schemes"]["ed25519"]["refresh_cpu_ms_median"]
    for figures in results["schemes"].values():
        figures["refresh_over_ed25519"] = round(figures["refresh_cpu_ms_median"] / baseline, 2)
    text = json.dumps(results, indent=2)
    print(text)
    if options.out:
        options.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
