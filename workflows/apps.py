from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    """The Temporal side: workflow types and policy, workflows, activities, the worker and its command.

    An app only so that `manage.py temporal_worker` lives with the worker; it has no models.
    """

    name = "workflows"
    verbose_name = "Temporal workflows"
