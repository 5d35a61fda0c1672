"""The device API under /device/v1/: check-in, artifact download, status feedback, telemetry."""
