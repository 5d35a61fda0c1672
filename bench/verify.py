"""Vehicle-side verification benchmark (not a test): `make bench-verify`, or
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_verify python -m bench.verify`.

1. Agent CPU of one update check with full verification of both repositories (classical, Ed25519): the image
   repository through ngclient (root, timestamp, snapshot, targets with its 2 signatures) and the director's
   per-device targets, cross-checked, exactly as `devices.agent.verify.Verifier.verify_offer` does it on a fresh
   vehicle (nothing trusted yet but the provisioned roots) and on a vehicle that already trusts the current
   snapshot and targets. The metadata is built with python-tuf in the same shape and key types as the server's.
   Next to it, in the same run: the raw signature checks it needs (6 Ed25519 verifications) and the JSON parsing
   of the same files. Target: at most 20 ms of agent CPU per update check. The same again in hybrid mode (an
   ML-DSA-65 key beside every image role's classical key, all required), same run (`agent_hybrid`).
2. Server cost at offer time: one `director_targets_sign` (one signature in the SoftHSM2 token, the root check,
   serialisation) next to one bare token signature, same run; a re-sent offer reuses the stored bytes (0 signatures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")

HARDWARE = "tcu-4g-r2"
SERIAL = "BENCH-0001"


def _cpu(action: Callable[[], Any], rounds: int) -> dict[str, float]:
    """CPU milliseconds per call (process time): median and p95 over `rounds` calls."""
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        action()
        samples.append((time.process_time() - started) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 3), "p95_ms": round(samples[int(len(samples) * 0.95)], 3)}


def _repositories(hybrid: bool = False) -> dict[str, Any]:
    """Both repositories as the server publishes them: image root/targets(2 keys)/snapshot/timestamp, consistent
    snapshots, a target with the custom fields; director root and one device's targets with its custom fields.
    `hybrid`: every image role also lists an ML-DSA-65 key, all keys required (the director stays classical, as
    the server's is)."""
    from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
    from tuf.api.serialization.json import JSONSerializer

    pretty, compact = JSONSerializer(compact=False), JSONSerializer(compact=True)
    now = datetime.now(UTC).replace(microsecond=0)
    keys = {name: CryptoSigner.generate_ed25519() for name in ("root", "t1", "t2", "snap", "ts", "droot", "dir")}
    names_of = {"root": ["root"], "targets": ["t1", "t2"], "snapshot": ["snap"], "timestamp": ["ts"]}
    if hybrid:
        for role, names in names_of.items():
            keys[f"{role}-ml-dsa"] = CryptoSigner(MLDSA65PrivateKey.generate())
            names.append(f"{role}-ml-dsa")
    image_root = Root(expires=now + timedelta(days=365), consistent_snapshot=True)
    for role, names in names_of.items():
        for name in names:
            image_root.add_key(keys[name].public_key, role)
        image_root.roles[role].threshold = len(names)

    def sign(metadata: Metadata[Any], role: str) -> None:
        for name in names_of[role]:
            metadata.sign(keys[name], append=True)

    root_md = Metadata(image_root)
    sign(root_md, "root")
    image = b"\x5a" * 4_000_000
    import hashlib

    sha = hashlib.sha256(image).hexdigest()
    custom = {"hardware_ids": [HARDWARE], "release_counter": 3}
    path = "1.2.0/tcu-1.2.0.bin"
    targets = {
        f"1.{i}.0/tcu-1.{i}.0.bin": TargetFile(
            length=len(image),
            hashes={"sha256": sha if i == 2 else hashlib.sha256(str(i).encode()).hexdigest()},
            path=f"1.{i}.0/tcu-1.{i}.0.bin",
            unrecognized_fields={"custom": custom},
        )
        for i in range(20)  # twenty releases listed, one of them offered
    }
    targets_md = Metadata(Targets(version=7, expires=now + timedelta(days=90), targets=targets))
    sign(targets_md, "targets")
    snapshot_md = Metadata(
        Snapshot(version=9, expires=now + timedelta(days=7), meta={"targets.json": MetaFile(version=7)})
    )
    sign(snapshot_md, "snapshot")
    snapshot_bytes = snapshot_md.to_bytes(pretty)
    timestamp_md = Metadata(
        Timestamp(
            version=11,
            expires=now + timedelta(days=1),
            snapshot_meta=MetaFile(
                version=9, length=len(snapshot_bytes), hashes={"sha256": hashlib.sha256(snapshot_bytes).hexdigest()}
            ),
        )
    )
    sign(timestamp_md, "timestamp")
    director_root = Root(expires=now + timedelta(days=365), consistent_snapshot=True)
    director_root.add_key(keys["droot"].public_key, "root")
    director_root.add_key(keys["dir"].public_key, "targets")
    director_root_md = Metadata(director_root)
    director_root_md.sign(keys["droot"])
    director_custom = {
        "device_serial": SERIAL,
        "hardware_id": HARDWARE,
        "release_counter": 3,
        "deployment_id": 42,
        "nonce": "00" * 16,
    }
    director_md = Metadata(
        Targets(
            version=int(now.timestamp() * 1000),
            expires=now + timedelta(hours=1),
            targets={
                path: TargetFile(
                    length=len(image),
                    hashes={"sha256": sha},
                    path=path,
                    unrecognized_fields={"custom": director_custom},
                )
            },
        )
    )
    director_md.sign(keys["dir"])
    files = {
        "/m/metadata/2.root.json": None,
        "/m/metadata/timestamp.json": timestamp_md.to_bytes(pretty),
        "/m/metadata/9.snapshot.json": snapshot_bytes,
        "/m/metadata/7.targets.json": targets_md.to_bytes(pretty),
    }
    return {
        "files": files,
        "image_root": root_md.to_bytes(pretty),
        "director_root": director_root_md.to_bytes(pretty),
        "director": director_md.to_bytes(compact).decode(),
        "offer": {
            "deployment_id": 42,
            "artifact": {"sha256": sha, "length": len(image)},
            "director": director_md.to_bytes(compact).decode(),
        },
        "signed": [
            (image_root, root_md, "root"),
            (image_root, timestamp_md, "timestamp"),
            (image_root, snapshot_md, "snapshot"),
            (image_root, targets_md, "targets"),
            (director_root, director_md, "targets"),
        ],
    }


def bench_agent(rounds: int, *, hybrid: bool = False) -> dict[str, Any]:
    """Agent CPU per update check (fresh vehicle and warm vehicle) next to the raw checks it needs."""
    from securesystemslib.formats import encode_canonical

    from devices.agent.verify import Trust, Verifier

    repos = _repositories(hybrid)
    trust = Trust(SERIAL, HARDWARE, repos["image_root"], repos["director_root"], image_repository_url="/m/")
    now = datetime.now(UTC)

    def check(state_dir: Path) -> None:
        verifier = Verifier(state_dir, trust)
        flow = verifier.verify_offer(repos["offer"], committed_counter=1, now=now)
        try:
            request = next(flow)
            while True:
                request = flow.send(repos["files"][request.url])
        except StopIteration:
            pass

    with tempfile.TemporaryDirectory() as work:
        counter = iter(range(10**9))

        def fresh() -> None:
            check(Path(work) / f"fresh-{next(counter)}")

        warm_dir = Path(work) / "warm"
        check(warm_dir)
        fresh_cpu = _cpu(fresh, rounds)
        warm_cpu = _cpu(lambda: check(warm_dir), rounds)

    def raw_signatures() -> None:
        for delegator, metadata, role in repos["signed"]:
            data = str(encode_canonical(metadata.signed.to_dict())).encode()
            for keyid in delegator.roles[role].keyids:
                delegator.keys[keyid].verify_signature(metadata.signatures[keyid], data)

    def raw_parse() -> None:
        for data in (*repos["files"].values(), repos["image_root"], repos["director_root"]):
            if data is not None:
                json.loads(data)
        json.loads(str(repos["director"]))

    signatures = sum(len(delegator.roles[role].keyids) for delegator, _, role in repos["signed"])
    raw = _cpu(raw_signatures, rounds)
    parse = _cpu(raw_parse, rounds)
    return {
        "update_check_fresh_vehicle": fresh_cpu,
        "update_check_warm_vehicle": warm_cpu,
        "raw_signature_checks": {**raw, "signatures": signatures},
        "raw_json_parse": parse,
        "ratio_fresh_to_raw_signatures": round(fresh_cpu["median_ms"] / max(raw["median_ms"], 1e-6), 2),
        "target_ms": 20,
        "within_target": fresh_cpu["p95_ms"] <= 20,
    }


def bench_server(rounds: int) -> dict[str, Any]:
    """Server CPU/wall per director signature at offer time vs one bare token signature, same run."""
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from devices.firmware.director.models import DirectorRoot
    from devices.firmware.director.services import (
        DirectorAssignment,
        director_init,
        director_root_draft,
        director_root_sign_offline,
        director_targets_sign,
    )
    from devices.firmware.keys.selectors import signing_key_active
    from devices.firmware.keys.services import key_create, key_import_public, role_sign
    from devices.firmware.repository.models import ImageTarget
    from ota_project.hsm.public import KeyAlgorithm
    from ota_project.hsm.roles import KeyRole
    from ota_project.hsm.token import role_label, server_token, token_key_generate
    from ota_project.roles import Role

    officer, _ = User.objects.get_or_create(username="bench-verify-officer")
    officer.groups.add(Group.objects.get(name=Role.SECURITY_OFFICER))
    if not DirectorRoot.objects.exists():
        if signing_key_active(KeyRole.DIRECTOR_ROOT) is None:  # the bench's stand-in for the offline token
            key = token_key_generate(label=role_label(KeyRole.DIRECTOR_ROOT), algorithm=KeyAlgorithm.ED25519)
            key_import_public(actor=officer, role=KeyRole.DIRECTOR_ROOT, public_key=key.public_key_pem)
        if signing_key_active(KeyRole.DIRECTOR) is None:
            key_create(actor=officer, role=KeyRole.DIRECTOR)
        director_init(actor=officer, root=director_root_sign_offline(director_root_draft(), token=server_token()))
    target = ImageTarget(path="1.2.0/tcu-1.2.0.bin", sha256="ab" * 32, length=4_000_000, release_counter=3)
    assignment = DirectorAssignment(deployment_id=42, device_serial=SERIAL, hardware_id=HARDWARE, target=target)

    def timed(action: Callable[[], Any]) -> dict[str, float]:
        cpu, wall = [], []
        for _ in range(rounds):
            started, started_cpu = time.perf_counter(), time.process_time()
            action()
            wall.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
        return {"wall_median_ms": round(statistics.median(wall), 3), "cpu_median_ms": round(statistics.median(cpu), 3)}

    sign = timed(lambda: director_targets_sign(assignment=assignment))
    bare = timed(lambda: role_sign(role=KeyRole.DIRECTOR, data=b"x" * 600))
    return {
        "director_targets_sign": sign,
        "bare_token_signature": bare,
        "ratio_sign_to_bare": round(sign["wall_median_ms"] / max(bare["wall_median_ms"], 1e-6), 2),
        "resent_offer_signatures": 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--agent-only", action="store_true", help="Skip the server part (no database needed).")
    args = parser.parse_args()
    result: dict[str, Any] = {"agent": bench_agent(args.rounds)}
    # Hybrid in the same run: the image repository with ML-DSA-65 beside every classical key (issue #11 item 5).
    hybrid = bench_agent(args.rounds, hybrid=True)
    hybrid["ratio_to_classical_fresh"] = round(
        hybrid["update_check_fresh_vehicle"]["median_ms"] / result["agent"]["update_check_fresh_vehicle"]["median_ms"],
        2,
    )
    result["agent_hybrid"] = hybrid
    if not args.agent_only:
        result["server"] = bench_server(max(20, args.rounds // 4))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
