"""The device-facing edge under /device/v1/: who the device is (identity), how fast it may come back (throttle),
check-in, artifact download, status feedback and telemetry (views), and the services that only the edge calls.

It sits above the rollout engine (it offers deployments and takes reports through rollouts' services) and is the
only room a vehicle talks to; the inventory below it (devices.*) knows nothing of it.
"""
