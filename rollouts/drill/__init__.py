"""The fleet drill: rehearse a rollout end to end on the real stack with a simulated fleet and real faults.

Rooms: `fleet` (reference agents), `faults` and `proxy` (device and network faults), `stack` (Temporal dev server,
worker and the web app under gunicorn, run by the project's one supervisor in ota_project.processes), `stall`
and `worker` (the drill's worker with a held activity), `scenarios`-level orchestration in `run`, the figures and
acceptance checks in `checks` and `report`, and the commands `fleet_drill` and `simulate_fleet`.
"""
