"""Settings of the check-in benchmark's server: the project's own, with the bench-only URLconf (bench.urls).

Never used outside `bench/`: production and `make run` use ota_project.settings, where the baseline views of
bench.urls do not exist.
"""

from ota_project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"

# wrk replays a few thousand devices' check-ins from one address far faster than any device polls: the abuse limits
# (devices.edge.abuse) still run on every request, measured, but with rates no bench round reaches.
OTA_DEVICE_RATE_PER_SECOND = 1_000_000.0
OTA_DEVICE_RATE_BURST = 1_000_000
OTA_ADDRESS_RATE_PER_SECOND = 1_000_000.0
OTA_ADDRESS_RATE_BURST = 1_000_000
