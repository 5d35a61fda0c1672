"""A gunicorn config file for tests: records each sendfile gunicorn makes (offset, bytes, used, the error that cut it) to a JSON-lines
file named by SENDFILE_PROBE_LOG, so a test observes the kernel path of a real server instead of assuming it."""

from __future__ import annotations

import json
import os
from typing import Any

from gunicorn.http import wsgi  # type: ignore[import-untyped]  # gunicorn ships no types

_sendfile = wsgi.Response.sendfile


def _probed_sendfile(self: Any, respiter: Any) -> bool:
    try:
        offset: int | None = os.lseek(respiter.filelike.fileno(), 0, os.SEEK_CUR)
    except (AttributeError, OSError):
        offset = None
    record: dict[str, Any] = {"used": False, "offset": offset, "length": self.response_length, "error": None}
    try:
        record["used"] = bool(_sendfile(self, respiter))
    except OSError as exc:  # the client went away mid-transfer
        record["error"] = type(exc).__name__
        raise
    finally:
        with open(os.environ["SENDFILE_PROBE_LOG"], "a") as log:
            log.write(json.dumps(record) + "\n")
    return bool(record["used"])


wsgi.Response.sendfile = _probed_sendfile
