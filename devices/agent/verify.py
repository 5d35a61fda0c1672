"""Full verification of an offer on the vehicle: the image repository with python-tuf's `ngclient`, the director's
per-device targets with python-tuf's Metadata API, and the two against each other and against the device.

What must hold before a single byte of the image is fetched (else `UntrustedUpdate`, reported as failure class
`untrusted`): the image repository's root, timestamp, snapshot and targets verify from the provisioned root (root
rotation, versions, hashes, expiry - ngclient); the director's targets are signed by the key its root names, not
expired, not older than the last director metadata this device accepted, name exactly one image, for this serial,
this hardware id and this deployment; the image repository lists that image with the same hash and length, for this
hardware id, with the same release counter; the counter is not below the committed one (anti-rollback). The image
is verified against the signed target's hashes and length before it is staged (agent.py).

Time: expiry is judged against the *trusted time*, the later of the device clock and the latest time this device
has already trusted (persisted, never going back), so a clock set back cannot revive expired metadata.

Sans-IO, like the agent's flows: the functions here are generators that yield `FetchBytes` and receive the bytes
(None for a 404), so the same code runs on the blocking and on the asyncio transport. ngclient itself is fed by a
fetcher over bytes fetched beforehand (`PrefetchedFetcher`): the agent reads the unverified timestamp and snapshot
only to know which consistent-snapshot files to fetch, ngclient then verifies everything in one pass (a file it
still misses is fetched and the pass repeated). Verification is CPU-only, a few milliseconds, so it runs on the
event loop in the fleet drill instead of in a thread (the GIL would serialise it anyway).
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securesystemslib.exceptions import FormatError
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from devices.agent.state import write_atomic
from devices.agent.tuf_limits import TufLimits, limit_for_file, limits_for_root_keys

MAX_METADATA_BYTES = 2_000_000  # a director file; the image repository's are bounded per role (tuf_limits)
MAX_ROOT_ROTATIONS = 32
MAX_PASSES = 8  # ngclient passes over prefetched bytes before giving up (each pass fetches what it missed)


class UntrustedUpdate(Exception):
    """The offer is not backed by the signed metadata; `check` names the rule that failed."""

    def __init__(self, check: str, message: str):
        super().__init__(f"{check}: {message}")
        self.check = check


@dataclass(frozen=True)
class FetchBytes:
    """A GET the verification needs; the driver answers the body, or None when the server answered 404."""

    url: str
    max_length: int = MAX_METADATA_BYTES


@dataclass(frozen=True)
class Trust:
    """What a vehicle is provisioned with: who it is and the two roots it trusts (bootstrap versions)."""

    serial: str
    hardware_id: str
    image_root: bytes
    director_root: bytes
    image_repository_url: str = "/repository/image/"  # metadata/ and targets/ below it (a CDN's URL in production)
    director_url: str = "/device/v1/director/"


@dataclass(frozen=True)
class VerifiedTarget:
    """The image both repositories agree this device must install."""

    path: str
    length: int
    sha256: str
    release_counter: int
    deployment_id: int
    director_version: int
    hashes: dict[str, str]

    def target_file(self) -> TargetFile:
        return TargetFile(length=self.length, hashes=dict(self.hashes), path=self.path)


class NeedFetch(tuf_exceptions.DownloadError):
    """ngclient asked for a file not fetched yet (a DownloadError, so ngclient lets it through unwrapped)."""

    def __init__(self, url: str):
        super().__init__(f"not fetched yet: {url}")
        self.url = url


class PrefetchedFetcher(FetcherInterface):
    """ngclient's fetcher over bytes the agent fetched through its own transport (None: the server said 404)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | None] = {}

    def _fetch(self, url: str) -> Iterator[bytes]:
        if url not in self.files:
            raise NeedFetch(url)
        data = self.files[url]
        if data is None:
            raise tuf_exceptions.DownloadHTTPError(f"{url}: not found", 404)
        return iter((data,))


Verification = Generator[FetchBytes, "bytes | None", Any]


def _json_hint(data: bytes | None) -> dict[str, Any]:
    """Unverified metadata read only to choose which files to fetch (ngclient verifies what is used)."""
    try:
        parsed = json.loads(data or b"{}")
    except ValueError:
        return {}
    signed = parsed.get("signed") if isinstance(parsed, dict) else None
    return signed if isinstance(signed, dict) else {}


def _local_version(path: Path) -> int | None:
    try:
        version = _json_hint(path.read_bytes()).get("version")
    except OSError:
        return None
    return version if isinstance(version, int) else None


class Verifier:
    """The vehicle's trusted metadata (state_dir/tuf/) and the checks an offer must pass."""

    def __init__(self, state_dir: Path, trust: Trust):
        self.trust = trust
        self.image_dir = state_dir / "tuf" / "image"
        self.director_dir = state_dir / "tuf" / "director"
        for directory in (self.image_dir, self.director_dir):
            directory.mkdir(parents=True, exist_ok=True)
        # Provisioning: the bootstrap roots are written once; afterwards the newest trusted root is what counts.
        if not (self.image_dir / "root.json").exists():
            write_atomic(self.image_dir / "root.json", trust.image_root, mode=0o644)
        if not (self.director_dir / "root.json").exists():
            write_atomic(self.director_dir / "root.json", trust.director_root, mode=0o644)

    # --- image repository (ngclient) -------------------------------------------------------------------------

    def _metadata_url(self) -> str:
        return self.trust.image_repository_url.rstrip("/") + "/metadata/"

    def _limits(self) -> TufLimits:
        """The size limits of the image repository as its trusted root says it is (hybrid: raised for ML-DSA)."""
        try:
            keys = json.loads((self.image_dir / "root.json").read_bytes())["signed"]["keys"]
            keytypes = [str(key.get("keytype", "")) for key in keys.values()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            keytypes = []  # ngclient refuses a broken root anyway; the tight limits meanwhile
        return limits_for_root_keys(keytypes)

    def _fetch(self, url: str) -> FetchBytes:
        """The GET of one metadata file, bounded by the limit of its role (the same limit ngclient applies)."""
        return FetchBytes(url, max_length=limit_for_file(self._limits(), url))

    def _prefetch(self, fetcher: PrefetchedFetcher) -> Verification:
        """Fetch what ngclient will ask for, guessing versions from the unverified timestamp and snapshot and
        skipping what the device already trusts."""
        base = self._metadata_url()
        root_version = _local_version(self.image_dir / "root.json") or 1
        next_root = f"{base}{root_version + 1}.root.json"
        fetcher.files[next_root] = yield self._fetch(next_root)
        timestamp_url = f"{base}timestamp.json"
        timestamp = fetcher.files[timestamp_url] = yield self._fetch(timestamp_url)
        snapshot_version = _json_hint(timestamp).get("meta", {}).get("snapshot.json", {}).get("version")
        if not isinstance(snapshot_version, int):
            return
        snapshot_url = f"{base}{snapshot_version}.snapshot.json"
        snapshot: bytes | None
        if _local_version(self.image_dir / "snapshot.json") == snapshot_version:
            snapshot = (self.image_dir / "snapshot.json").read_bytes()
        else:
            snapshot = fetcher.files[snapshot_url] = yield self._fetch(snapshot_url)
        targets_version = _json_hint(snapshot).get("meta", {}).get("targets.json", {}).get("version")
        if isinstance(targets_version, int) and _local_version(self.image_dir / "targets.json") != targets_version:
            targets_url = f"{base}{targets_version}.targets.json"
            fetcher.files[targets_url] = yield self._fetch(targets_url)

    def image_target(self, path: str, now: datetime) -> Verification:
        """The image repository's verified entry for `path` (refresh through ngclient, trusted time `now`)."""
        fetcher = PrefetchedFetcher()
        yield from self._prefetch(fetcher)
        for _ in range(MAX_PASSES):
            # Each pass re-reads the limits: a root rotated to hybrid in the last pass raises them for the rest.
            config = UpdaterConfig(max_root_rotations=MAX_ROOT_ROTATIONS, **asdict(self._limits()))
            updater = Updater(
                str(self.image_dir),
                self._metadata_url(),
                fetcher=fetcher,
                config=config,
                bootstrap=None,
            )
            # ngclient judges expiry by the system clock; the vehicle judges it by its trusted time.
            updater._trusted_set.reference_time = now
            try:
                updater.refresh()
                info = updater.get_targetinfo(path)
            except NeedFetch as need:
                fetcher.files[need.url] = yield self._fetch(need.url)
                continue
            except tuf_exceptions.ExpiredMetadataError as exc:
                raise UntrustedUpdate("image_expired", str(exc)) from exc
            except tuf_exceptions.BadVersionNumberError as exc:
                raise UntrustedUpdate("image_rollback", str(exc)) from exc
            except tuf_exceptions.RepositoryError as exc:
                raise UntrustedUpdate("image_metadata", f"{type(exc).__name__}: {exc}") from exc
            except tuf_exceptions.DownloadError as exc:
                raise UntrustedUpdate("image_metadata", f"{type(exc).__name__}: {exc}") from exc
            if info is None:
                raise UntrustedUpdate("image_unlisted", f"the image repository does not list {path}")
            return info
        raise UntrustedUpdate("image_metadata", "the image repository kept asking for more files")

    # --- director (Metadata API) -----------------------------------------------------------------------------

    def _director_root(self) -> Metadata[Root]:
        return Metadata[Root].from_bytes((self.director_dir / "root.json").read_bytes())

    def _director_root_update(self, root: Metadata[Root]) -> Verification:
        """Walk the director's root chain from the trusted version (each new root signed by the old and the new
        threshold, versions consecutive); returns the newest trusted root."""
        for _ in range(MAX_ROOT_ROTATIONS):
            version = root.signed.version + 1
            data = yield FetchBytes(f"{self.trust.director_url.rstrip('/')}/{version}.root.json")
            if data is None:
                return root
            try:
                new = Metadata[Root].from_bytes(data)
                if not isinstance(new.signed, Root) or new.signed.version != version:
                    raise UntrustedUpdate("director_root", f"not director root version {version}")
                root.verify_delegate(Root.type, new)
                new.verify_delegate(Root.type, new)
            except (DeserializationError, FormatError, tuf_exceptions.UnsignedMetadataError, ValueError) as exc:
                raise UntrustedUpdate("director_root", f"director root v{version}: {exc}") from exc
            write_atomic(self.director_dir / f"{version}.root.json", data, mode=0o644)
            write_atomic(self.director_dir / "root.json", data, mode=0o644)
            root = new
        return root

    def director_entry(self, data: bytes, *, deployment_id: int, now: datetime) -> Verification:
        """The director's targets for this device, verified; returns (metadata, target file)."""
        try:
            metadata = Metadata[Targets].from_bytes(data)
        except (DeserializationError, FormatError, ValueError) as exc:
            raise UntrustedUpdate("director_malformed", str(exc)) from exc
        if not isinstance(metadata.signed, Targets):
            raise UntrustedUpdate("director_malformed", f"{metadata.signed.type} metadata, not targets")
        root = self._director_root()
        try:
            root.verify_delegate(Targets.type, metadata)
        except (tuf_exceptions.UnsignedMetadataError, ValueError):
            root = yield from self._director_root_update(root)  # maybe signed by a key a newer root names
            try:
                root.verify_delegate(Targets.type, metadata)
            except (tuf_exceptions.UnsignedMetadataError, ValueError) as exc:
                raise UntrustedUpdate("director_signature", str(exc)) from exc
        signed = metadata.signed
        if signed.is_expired(now):
            raise UntrustedUpdate("director_expired", f"expired {signed.expires.isoformat()}, trusted time {now}")
        trusted = self.director_trusted()
        if trusted is not None:
            if signed.version < trusted[0]:
                raise UntrustedUpdate("director_rollback", f"version {signed.version} < trusted {trusted[0]}")
            if signed.version == trusted[0] and data != trusted[1]:
                raise UntrustedUpdate("director_rollback", f"another version {signed.version} than the trusted one")
        if len(signed.targets) != 1:
            raise UntrustedUpdate("director_targets", f"{len(signed.targets)} targets, not exactly one")
        target = next(iter(signed.targets.values()))
        custom = target.unrecognized_fields.get("custom")
        if not isinstance(custom, dict):
            raise UntrustedUpdate("director_targets", "no custom fields")
        if custom.get("device_serial") != self.trust.serial:
            raise UntrustedUpdate("director_serial", f"for device {custom.get('device_serial')!r}, not this one")
        if custom.get("hardware_id") != self.trust.hardware_id:
            raise UntrustedUpdate("hardware_id", f"for hardware {custom.get('hardware_id')!r}, not this one")
        if custom.get("deployment_id") != deployment_id:
            raise UntrustedUpdate("director_deployment", f"for deployment {custom.get('deployment_id')!r}")
        if not isinstance(custom.get("nonce"), str) or len(custom["nonce"]) < 16:
            raise UntrustedUpdate("director_targets", "no nonce")
        return metadata, target

    def director_trusted(self) -> tuple[int, bytes] | None:
        """(version, bytes) of the last director targets this device accepted."""
        path = self.director_dir / "targets.json"
        try:
            data = path.read_bytes()
        except OSError:
            return None
        version = _json_hint(data).get("version")
        return (version, data) if isinstance(version, int) else None

    # --- the offer -------------------------------------------------------------------------------------------

    def verify_offer(self, offer: dict[str, Any], *, committed_counter: int, now: datetime) -> Verification:
        """Everything an offer must pass before its image is fetched; returns the VerifiedTarget."""
        director = offer.get("director")
        if not isinstance(director, str) or not director:
            raise UntrustedUpdate("director_missing", "the offer carries no director metadata")
        deployment_id = int(offer["deployment_id"])
        metadata, entry = yield from self.director_entry(director.encode(), deployment_id=deployment_id, now=now)
        image = yield from self.image_target(entry.path, now)
        if image.length != entry.length or image.hashes.get("sha256") != entry.hashes.get("sha256"):
            raise UntrustedUpdate("image_mismatch", f"the image repository lists {entry.path} with another hash")
        image_custom = image.unrecognized_fields.get("custom") or {}
        director_custom = entry.unrecognized_fields["custom"]
        if self.trust.hardware_id not in (image_custom.get("hardware_ids") or []):
            raise UntrustedUpdate("hardware_id", f"{entry.path} is not signed for {self.trust.hardware_id}")
        counter = image_custom.get("release_counter")
        if not isinstance(counter, int) or counter != director_custom.get("release_counter"):
            raise UntrustedUpdate("release_counter", "the director's release counter is not the image repository's")
        if counter < committed_counter:
            raise UntrustedUpdate(
                "anti_rollback", f"release counter {counter} is below the committed {committed_counter}"
            )
        artifact = offer.get("artifact") or {}
        if artifact.get("sha256") != image.hashes.get("sha256") or int(artifact.get("length", -1)) != image.length:
            raise UntrustedUpdate("offer_mismatch", "the offer's artifact is not the signed image")
        write_atomic(self.director_dir / "targets.json", director.encode(), mode=0o644)
        return VerifiedTarget(
            path=image.path,
            length=image.length,
            sha256=image.hashes["sha256"],
            release_counter=counter,
            deployment_id=deployment_id,
            director_version=metadata.signed.version,
            hashes=dict(image.hashes),
        )

    def still_directed(self, data: bytes | None, target: VerifiedTarget, *, now: datetime) -> Verification:
        """Before installing: the director still serves metadata naming this image for this deployment (None: it
        withdrew it). Raises UntrustedUpdate when what it serves does not verify or names something else."""
        if data is None:
            return False
        _, entry = yield from self.director_entry(data, deployment_id=target.deployment_id, now=now)
        if entry.path != target.path or entry.hashes.get("sha256") != target.sha256 or entry.length != target.length:
            raise UntrustedUpdate("director_changed", "the director now names another image")
        write_atomic(self.director_dir / "targets.json", data, mode=0o644)
        return True


def trusted_now(clock_seconds: float, latest_trusted: float) -> datetime:
    """The time expiry is judged by: never earlier than a time the device already trusted."""
    return datetime.fromtimestamp(max(clock_seconds, latest_trusted), UTC)


def file_matches(path: os.PathLike[str] | str, target: VerifiedTarget) -> str | None:
    """None when the file has the signed length and hashes, else why not (python-tuf's own check)."""
    try:
        with open(path, "rb") as file:
            target.target_file().verify_length_and_hashes(file)
    except tuf_exceptions.LengthOrHashMismatchError as exc:
        return str(exc)
    return None
