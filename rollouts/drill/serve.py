"""`python -m rollouts.drill.serve --port P`: the project's WSGI app on a small pooled WSGI server for drills.

Why not `runserver`: it opens a database connection per request (and closes it), handles each connection on a
new thread and queues only ten pending connections, so a fleet of thousands spends its time in SYN retries and
PostgreSQL backend start-ups. This server keeps a fixed pool of request threads, each with its persistent
database connection (CONN_MAX_AGE), and a listen backlog sized for a fleet. It is the stdlib's wsgiref server
otherwise: the same Django application, middleware and views as any production WSGI server runs.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import sys
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer


class QuietHandler(WSGIRequestHandler):
    """No access log line per request (the drill counts requests at the proxy)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass


class PooledWSGIServer(WSGIServer):
    """A WSGI server handing accepted connections to a fixed pool of threads."""

    request_queue_size = 2048
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], threads: int):
        super().__init__(address, QuietHandler)
        self.pending: queue.Queue[tuple[socket.socket, Any]] = queue.Queue()
        for index in range(threads):
            threading.Thread(target=self._work, name=f"wsgi-{index}", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pending.put((request, client_address))

    def _work(self) -> None:
        while True:
            request, client_address = self.pending.get()
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - one broken connection must not end the thread
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rollouts.drill.serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rollouts.drill.server_settings")
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
    server = PooledWSGIServer((args.host, args.port), args.threads)
    server.set_app(application)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"serving on {args.host}:{args.port} with {args.threads} threads", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
