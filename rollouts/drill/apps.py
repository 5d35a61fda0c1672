from django.apps import AppConfig


class DrillConfig(AppConfig):
    """The fleet drill and the simulated fleet of `make run`: sub-app so its commands live with it."""

    name = "rollouts.drill"
    label = "drill"
    verbose_name = "Fleet drills"
