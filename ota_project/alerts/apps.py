from django.apps import AppConfig


class AlertsConfig(AppConfig):
    """The alerts sub-app of the core (label `alerts`)."""

    name = "ota_project.alerts"
    label = "alerts"
    verbose_name = "Alerts"
    default_auto_field = "django.db.models.BigAutoField"
