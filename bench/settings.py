"""Settings of the check-in benchmark's server: the project's own, with the bench-only URLconf (bench.urls).

Never used outside `bench/`: production and `make run` use ota_project.settings, where the baseline views of
bench.urls do not exist.
"""

from ota_project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
