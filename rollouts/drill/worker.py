"""`python -m rollouts.drill.worker --stall ACTIVITY --stall-seconds N --stall-mark PATH`: the drill's worker.

The production worker (`manage.py temporal_worker`) with one drill-only fault hook wired in through the client:
rollouts.drill.stall.StallActivity holds the first attempt of one named activity for N seconds, after writing
PATH, so a chaos scenario can SIGKILL the worker inside that step. Only the drill's stack starts this entry point;
it prints the same "polling task queue" line as the production worker, which the stack waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rollouts.drill.worker")
    parser.add_argument("--stall", required=True, help="Activity type to stall, e.g. rollouts.rollout_halt.")
    parser.add_argument("--stall-seconds", type=float, required=True)
    parser.add_argument("--stall-mark", type=Path, required=True, help="Written when the stall begins.")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections
    from temporalio.client import Client

    from rollouts.drill.stall import StallActivity
    from workflows.client import temporal_client
    from workflows.worker import run_worker

    stall = StallActivity(args.stall, args.stall_seconds, args.stall_mark)

    def announce(_worker: object) -> None:
        print(
            f"temporal_worker: polling task queue {settings.TEMPORAL_TASK_QUEUE} on {settings.TEMPORAL_ADDRESS} "
            f"(drill worker: stalls {args.stall} for {args.stall_seconds:g} s, pid {os.getpid()})",
            flush=True,
        )

    async def run() -> None:
        base = await temporal_client()
        config = base.config()  # a copy
        config["interceptors"] = [stall]
        client = Client(**config)
        await run_worker(client=client, on_started=announce)

    code = 0
    try:
        asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - reported, then the same hard exit as the production worker
        print(f"temporal_worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    # The Temporal runtime can crash the interpreter at exit (sdk-python#300): flush, close, leave now.
    connections.close_all()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
