"""Settings of the drill's web processes: the project's own settings, with time compressed by configuration.

Devices poll as often as OTA_DRILL_POLL_SECONDS says (the drill sizes it to the fleet so the check-in rate stays
what the machine can serve); the per-request access log is off (it would cost more than the requests).
"""

import os

from ota_project.settings import *  # noqa: F403
from ota_project.settings import LOGGING

OTA_DEVICE_POLL_SECONDS = int(os.environ.get("OTA_DRILL_POLL_SECONDS", "10"))
LOGGING = {
    **LOGGING,
    "loggers": {**LOGGING.get("loggers", {}), "django.server": {"handlers": [], "level": "ERROR", "propagate": False}},
}
