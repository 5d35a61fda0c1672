"""What signing each decision record costs (not a test): appends and verification, signed vs. an unsigned baseline.

Run on a scratch PostgreSQL database (it is migrated, and every append is rolled back), e.g.
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_audit_bench python -m bench.record_signing [--records 2000]`.
The baseline is measured in the same run with a trust that returns a constant signature and accepts everything,
so the difference is the Ed25519 work (and key handling) alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")
os.environ.setdefault("OTA_DATA_DIR", tempfile.mkdtemp(prefix="ota-bench-"))

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from approvals.audit import records  # noqa: E402
from approvals.audit.checkpoints import AuditKeyTrust  # noqa: E402
from approvals.audit.records import CheckpointSet, SignatureVerifier  # noqa: E402
from ota_project.hsm.softhsm import softhsm_setup  # noqa: E402

# The audit key lives in a token: a SoftHSM2 one in the bench's data directory unless the environment names another.
if "SOFTHSM2_CONF" not in os.environ and "softhsm" in settings.PKCS11_MODULE:
    softhsm_setup(settings.SOFTHSM2_CONF.parent, settings.PKCS11_TOKEN)


class UnsignedTrust:
    """The baseline: no key work at all."""

    def sign(self, message: bytes) -> tuple[str, bytes]:
        return "0" * 64, bytes(64)

    def verifier(self) -> SignatureVerifier:
        return lambda key_id, message, signature: True

    def checkpoints(self) -> CheckpointSet:
        return CheckpointSet()


class _Rollback(Exception):
    pass


def appends_per_record_us(count: int) -> float:
    """Mean CPU µs of this process per record_decision (lock, read head, hash, sign, insert), rolled back afterwards.
    CPU time, not wall-clock: signing is all in-process, and the wall clock of a shared machine is mostly noise."""
    started = time.process_time()
    try:
        with transaction.atomic():
            for i in range(count):
                records.record_decision(actor=None, action="bench.append", object_type="bench", object_id=i)
            elapsed = time.process_time() - started
            raise _Rollback
    except _Rollback:
        pass
    return elapsed / count * 1e6


def verify_per_record_us(count: int) -> float:
    """Mean CPU µs per record of a full chain_verify over `count` records (appended and rolled back here)."""
    try:
        with transaction.atomic():
            for i in range(count):
                records.record_decision(actor=None, action="bench.verify", object_type="bench", object_id=i)
            started = time.process_time()
            assert records.chain_verify().length == count
            elapsed = time.process_time() - started
            raise _Rollback
    except _Rollback:
        pass
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    print(f"data dir {Path(os.environ['OTA_DATA_DIR'])}, {args.records} records, best of {args.runs}")

    sign_only = []
    trust = AuditKeyTrust()
    message = records.record_signing_message("ab" * 32)
    trust.sign(message)  # the key is generated and loaded once, outside the measurement
    for _ in range(2000):
        started = time.perf_counter()
        trust.sign(message)
        sign_only.append((time.perf_counter() - started) * 1e6)

    # Interleaved, each after a VACUUM: rolled-back rows leave dead tuples that would slow whichever runs later.
    trusts: dict[str, records.RecordTrust] = {"unsigned baseline": UnsignedTrust(), "signed": trust}
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in trusts}
    for _ in range(args.runs):
        for label, installed in trusts.items():
            records.record_trust_install(installed)
            with connection.cursor() as cursor:
                cursor.execute("VACUUM approvals_decisionrecord")
            samples[label].append((appends_per_record_us(args.records), verify_per_record_us(args.records)))
    records.record_trust_install(trust)
    results = {label: (min(a for a, _ in runs), min(v for _, v in runs)) for label, runs in samples.items()}

    print(f"sign only (load cached key, Ed25519 sign): median {statistics.median(sign_only):.1f} µs")
    for label, (append_us, verify_us) in results.items():
        print(f"{label:>18}: append {append_us:7.1f} CPU µs/record, full verify {verify_us:6.1f} CPU µs/record")
    (base_append, base_verify), (signed_append, signed_verify) = results.values()
    print(
        f"signing adds {signed_append - base_append:.1f} µs per append (x{signed_append / base_append:.2f}), "
        f"{signed_verify - base_verify:.1f} µs per record to a full verification (x{signed_verify / base_verify:.2f})"
    )


if __name__ == "__main__":
    main()
