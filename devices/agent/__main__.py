"""python -m devices.agent --state-dir DIR --server https://HOST:PORT --identity-dir DIR
[--hardware-id H --image-root 1.root.json --director-root director-1.root.json]

The identity directory is what `python manage.py devices provision --out ...` wrote for this device (its key and
certificate, the CA bundle and the server pins; the directory is named by the serial). `--serial S --secret X`
instead is the development mode only (the server must run with OTA_DEVICE_AUTH=secret). With the trust roots the
agent verifies the image repository and the director before it installs anything."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from devices.agent.agent import Agent
from devices.agent.tls import TlsIdentity
from devices.agent.transport import HttpTransport
from devices.agent.verify import Trust


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devices.agent", description="The reference OTA device agent.")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--server", required=True, help="e.g. https://ota.example.com")
    parser.add_argument("--identity-dir", help="the device's key, certificate, CA bundle and server pins")
    parser.add_argument("--serial", default="", help="development mode only (with --secret)")
    parser.add_argument("--secret", default="", help="development mode only: a secret credential instead of TLS")
    parser.add_argument("--version", default="1.0.0", help="factory version of slot a (first start only)")
    parser.add_argument("--release-counter", type=int, default=1, help="factory release counter (first start only)")
    parser.add_argument("--max-cycles", type=int, default=None)
    parser.add_argument("--hardware-id", help="this unit's hardware model (with the trust roots)")
    parser.add_argument("--image-root", help="the image repository's 1.root.json provisioned at the factory")
    parser.add_argument("--director-root", help="the director's root v1 provisioned at the factory")
    parser.add_argument("--image-repository-url", default="/repository/image/", help="where metadata/ and targets/ are")
    args = parser.parse_args(argv)
    roots = (args.hardware_id, args.image_root, args.director_root)
    if any(roots) and not all(roots):
        parser.error("--hardware-id, --image-root and --director-root go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(args.identity_dir) == bool(args.secret):
        parser.error("give --identity-dir (mutual TLS) or, in development mode, --serial and --secret")
    tls = TlsIdentity.from_directory(args.identity_dir) if args.identity_dir else None
    serial = args.serial or (Path(args.identity_dir).name if args.identity_dir else "")
    transport = HttpTransport(args.server, args.serial, args.secret, tls=tls)
    trust = None
    if all(roots):
        with open(args.image_root, "rb") as image_root, open(args.director_root, "rb") as director_root:
            trust = Trust(serial, args.hardware_id, image_root.read(), director_root.read(), args.image_repository_url)
    agent = Agent(args.state_dir, transport, version=args.version, release_counter=args.release_counter, trust=trust)
    agent.run(max_cycles=args.max_cycles)


if __name__ == "__main__":
    main()
