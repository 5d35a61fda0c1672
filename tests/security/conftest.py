"""The device API's fixtures (a running rollout with its image stored, its two pilots) for the security tests."""

from tests.device_api.conftest import (  # noqa: F401 - fixtures, found by pytest by name
    _fresh_download_verdicts,
    _no_temporal,
    assigned,
    other_pilot,
    pilot,
    rollout,
    running,
    sha,
)
