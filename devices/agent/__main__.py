"""python -m devices.agent --state-dir DIR --server URL --serial S --secret X"""

from __future__ import annotations

import argparse
import logging

from devices.agent.agent import Agent
from devices.agent.transport import HttpTransport


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devices.agent", description="The reference OTA device agent.")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--server", required=True, help="e.g. https://ota.example.com")
    parser.add_argument("--serial", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--version", default="1.0.0", help="factory version of slot a (first start only)")
    parser.add_argument("--release-counter", type=int, default=1, help="factory release counter (first start only)")
    parser.add_argument("--max-cycles", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transport = HttpTransport(args.server, args.serial, args.secret)
    agent = Agent(args.state_dir, transport, version=args.version, release_counter=args.release_counter)
    agent.run(max_cycles=args.max_cycles)


if __name__ == "__main__":
    main()
