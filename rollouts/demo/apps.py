from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The embedded demo's data and its `seed_demo` command: sub-app so the command lives with the data."""

    name = "rollouts.demo"
    label = "demo"
    verbose_name = "Embedded demo"
