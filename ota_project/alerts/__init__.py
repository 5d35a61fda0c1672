"""Alerts: one deduplicated alert per condition, delivered to the UI, by e-mail and to a signed webhook.

The core of the alert room (sub-app label `alerts`): it imports no app, so the inventory, change control and
rollouts can all raise alerts (`ota_project.alerts.services.raise_alert`). A person's acknowledgement is a
decision record, written by the service above (`rollouts.alert_services`), which uses the guarded transition here.
"""
