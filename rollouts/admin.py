"""No admin pages for rollouts: they change only through the services and the rollout workflow.

The read-only release and artifact admin moved to devices/firmware/admin.py.
"""
