"""python manage.py devices <ca-init | provision | renew | revoke | nginx-config | server-pins> ...

The device PKI's runbook commands (README "Device PKI and mutual TLS"):
- `ca-init [--storage token|file] [--rotate]`: the root (key used once, never stored) and the issuing intermediate.
- `provision --serial S [--serial S2 ...] | --unprovisioned [--limit N]  --out DIR [--actor U]`: a key and a
  certificate per device, written where the agent reads them (DIR/<serial>/: device-key.pem, device.pem,
  ca.pem, server-pins.txt); one batch, one token session, one decision record.
- `renew --serial S | --due [--within-days N]  --out DIR [--actor U]`: a new key and certificate before expiry.
- `revoke --serial S --reason TEXT --actor U`: refused from the device's next request on.
- `nginx-config --listen HOST:PORT --upstream HOST:PORT --out DIR [--host NAME ...]`: the device port's nginx.conf
  (server certificate issued when needed, CA bundle, proxy secret) for `nginx -c DIR/nginx.conf`.
- `server-pins`: the SPKI pins (server key, backup key) agents are given.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.certificates import (
    certificates_due_for_renewal,
    device_ca_create,
    device_ca_ensure,
    device_certificate_renew,
    device_certificate_revoke,
    device_certificates_provision,
)
from devices.choices import CertificateStatus
from devices.edge.identity import device_proxy_secret
from devices.edge.nginx import nginx_device_tls_site, nginx_main_conf
from devices.models import Device
from devices.pki import (
    PkiError,
    ca_exists,
    device_identity_write,
    pki_paths,
    server_certificate_ensure,
    server_pins,
)
from ota_project.errors import DomainError


class Command(BaseCommand):
    help = "Device PKI: create the CA, provision, renew and revoke device certificates, configure nginx."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        ca = sub.add_parser("ca-init", help="Create the device CA (root + issuing intermediate).")
        ca.add_argument("--storage", choices=("token", "file"), default=None, help="Default: OTA_DEVICE_CA_KEY.")
        ca.add_argument("--rotate", action="store_true", help="Replace an existing CA (old roots stay trusted).")
        ca.add_argument("--actor", help="Username recorded as the one who did it (default: system).")

        provision = sub.add_parser("provision", help="Issue device keys and certificates.")
        chosen = provision.add_mutually_exclusive_group(required=True)
        chosen.add_argument("--serial", action="append", help="A device serial (repeatable).")
        chosen.add_argument("--unprovisioned", action="store_true", help="Every active device without one.")
        provision.add_argument("--limit", type=int, default=None)
        provision.add_argument("--out", type=Path, required=True, help="Directory of the agents' identities.")
        provision.add_argument("--actor", help="Username recorded (default: system).")

        renew = sub.add_parser("renew", help="Renew device certificates before they expire.")
        which = renew.add_mutually_exclusive_group(required=True)
        which.add_argument("--serial", action="append")
        which.add_argument("--due", action="store_true", help="Every certificate expiring within --within-days.")
        renew.add_argument("--within-days", type=int, default=None, help="Default: OTA_DEVICE_CERT_RENEW_DAYS.")
        renew.add_argument("--out", type=Path, required=True)
        renew.add_argument("--reason", default="")
        renew.add_argument("--actor")

        revoke = sub.add_parser("revoke", help="Revoke a device's certificate.")
        revoke.add_argument("--serial", required=True)
        revoke.add_argument("--reason", required=True)
        revoke.add_argument("--actor", required=True, help="The operator or security officer revoking it.")

        nginx = sub.add_parser("nginx-config", help="Write the device port's nginx.conf.")
        nginx.add_argument("--listen", required=True, help="e.g. 127.0.0.1:8443")
        nginx.add_argument("--upstream", required=True, help="gunicorn's host:port on loopback")
        nginx.add_argument("--out", type=Path, required=True, help="nginx's work directory (conf, pid, logs)")
        nginx.add_argument("--host", action="append", default=None, help="Names in the server certificate.")
        nginx.add_argument("--workers", type=int, default=1)

        sub.add_parser("server-pins", help="Print the server key pins agents are given.")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            getattr(self, f"_{action.replace('-', '_')}")(**options)
        except DomainError as error:
            for name, problems in error.fields.items():
                for problem in problems if isinstance(problems, list) else [problems]:
                    self.stderr.write(f"{name}: {problem}")
            raise CommandError(error.message) from None
        except PkiError as error:
            raise CommandError(str(error)) from None

    def _actor(self, username: str | None, *, required: bool = False) -> User | None:
        if not username:
            if required:
                raise CommandError("--actor is required.")
            return None
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user named {username!r}.")
        return user

    def _ca_if_none(self) -> None:
        """A fresh machine (`make run`, a drill) gets its CA on first use, recorded like `ca-init`."""
        device_ca_ensure()

    def _ca_init(self, *, storage: str | None, rotate: bool, actor: str | None, **options: Any) -> None:
        person = self._actor(actor)
        if ca_exists() and not rotate:
            raise CommandError(f"A device CA exists in {pki_paths().directory}; --rotate replaces it.")
        chosen = storage or str(getattr(settings, "OTA_DEVICE_CA_KEY", "token"))
        fingerprint = device_ca_create(
            actor=person, storage=chosen, rotation=rotate, system_actor=f"cli:{getpass.getuser()}"
        )
        where = "the PKCS#11 token" if chosen == "token" else "a file (development only)"
        self.stdout.write(
            self.style.SUCCESS(
                f"Device CA in {pki_paths().directory}: intermediate {fingerprint[:16]}…, key in {where}"
            )
        )

    def _provision(
        self,
        *,
        serial: list[str] | None,
        unprovisioned: bool,
        limit: int | None,
        out: Path,
        actor: str | None,
        **o: Any,
    ) -> None:
        person = self._actor(actor)
        self._ca_if_none()
        if unprovisioned:
            queryset = Device.objects.filter(status="active").exclude(certificates__status=CertificateStatus.ACTIVE)
            devices = list(queryset.order_by("serial")[:limit] if limit else queryset.order_by("serial"))
            if not devices:
                self.stdout.write("Every active device already has a certificate.")
                return
        else:
            found = {device.serial: device for device in Device.objects.filter(serial__in=serial or [])}
            missing = sorted(set(serial or []) - set(found))
            if missing:
                raise CommandError(f"No device {', '.join(missing)}.")
            devices = list(found.values())
        pins = server_pins()
        issued = device_certificates_provision(actor=person, devices=devices)
        for pair in issued:
            device_identity_write(out, pair, pins)
        self.stdout.write(self.style.SUCCESS(f"Provisioned {len(issued)} device(s) into {out}."))

    def _renew(
        self,
        *,
        serial: list[str] | None,
        due: bool,
        within_days: int | None,
        out: Path,
        reason: str,
        actor: str | None,
        **options: Any,
    ) -> None:
        person = self._actor(actor)
        devices = (
            certificates_due_for_renewal(within_days=within_days)
            if due
            else list(Device.objects.filter(serial__in=serial or []))
        )
        if not due and len(devices) != len(set(serial or [])):
            raise CommandError("Unknown serial(s).")
        pins = server_pins()
        for device in devices:
            renewal = device_certificate_renew(actor=person, device=device, reason=reason)
            device_identity_write(out, renewal.issued, pins)
        self.stdout.write(self.style.SUCCESS(f"Renewed {len(devices)} certificate(s) into {out}."))

    def _revoke(self, *, serial: str, reason: str, actor: str, **options: Any) -> None:
        person = self._actor(actor, required=True)
        assert person is not None
        device = Device.objects.filter(serial=serial).first()
        if device is None:
            raise CommandError(f"No device {serial}.")
        revoked = device_certificate_revoke(actor=person, device=device, reason=reason)
        self.stdout.write(self.style.SUCCESS(f"Revoked certificate {revoked.serial_number} of {serial}."))

    def _nginx_config(
        self, *, listen: str, upstream: str, out: Path, host: list[str] | None, workers: int, **options: Any
    ) -> None:
        self._ca_if_none()
        listen_host = listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
        hosts = host or sorted({listen_host, "127.0.0.1", "localhost"})
        server_certificate_ensure(hosts=hosts)
        paths = pki_paths()
        out = out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        site = nginx_device_tls_site(
            listen=listen,
            upstream=upstream,
            artifact_root=Path(settings.ARTIFACT_ROOT).resolve(),
            server_certificate=paths.server_certificate.resolve(),
            server_key=paths.server_key.resolve(),
            client_ca_bundle=paths.bundle.resolve(),
            proxy_secret=device_proxy_secret(),
        )
        user = getpass.getuser() if os.geteuid() == 0 else ""
        conf = nginx_main_conf(workdir=out, servers=[site], workers=workers, user=user)
        staging = out / ".nginx.conf.new"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the proxy secret
        with os.fdopen(fd, "w") as handle:
            handle.write(conf)
        os.replace(staging, out / "nginx.conf")
        self.stdout.write(f"nginx configuration for the device port {listen} written to {out / 'nginx.conf'}")

    def _server_pins(self, **options: Any) -> None:
        for pin in server_pins():
            self.stdout.write(pin)
