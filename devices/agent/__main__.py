"""python -m devices.agent --state-dir DIR --server URL --serial S --secret X
[--hardware-id H --image-root 1.root.json --director-root director-1.root.json]"""

from __future__ import annotations

import argparse
import logging

from devices.agent.agent import Agent
from devices.agent.transport import HttpTransport
from devices.agent.verify import Trust


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devices.agent", description="The reference OTA device agent.")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--server", required=True, help="e.g. https://ota.example.com")
    parser.add_argument("--serial", required=True)
    parser.add_argument("--secret", required=True)
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
    transport = HttpTransport(args.server, args.serial, args.secret)
    trust = None
    if all(roots):
        with open(args.image_root, "rb") as image_root, open(args.director_root, "rb") as director_root:
            trust = Trust(
                args.serial, args.hardware_id, image_root.read(), director_root.read(), args.image_repository_url
            )
    agent = Agent(args.state_dir, transport, version=args.version, release_counter=args.release_counter, trust=trust)
    agent.run(max_cycles=args.max_cycles)


if __name__ == "__main__":
    main()
