"""python -m devices.agent --state-dir DIR --server https://HOST:PORT --identity-dir DIR

The identity directory is what `python manage.py devices provision --out ...` wrote for this device (its key and
certificate, the CA bundle and the server pins). `--serial S --secret X` instead is the development mode only
(the server must run with OTA_DEVICE_AUTH=secret)."""

from __future__ import annotations

import argparse
import logging

from devices.agent.agent import Agent
from devices.agent.tls import TlsIdentity
from devices.agent.transport import HttpTransport


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(args.identity_dir) == bool(args.secret):
        parser.error("give --identity-dir (mutual TLS) or, in development mode, --serial and --secret")
    tls = TlsIdentity.from_directory(args.identity_dir) if args.identity_dir else None
    transport = HttpTransport(args.server, args.serial, args.secret, tls=tls)
    agent = Agent(args.state_dir, transport, version=args.version, release_counter=args.release_counter)
    agent.run(max_cycles=args.max_cycles)


if __name__ == "__main__":
    main()
