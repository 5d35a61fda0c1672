from django.apps import AppConfig


class DeviceEdgeConfig(AppConfig):
    """The device API and its TLS edge (nginx): sub-app so the device PKI's command (`devices`) lives with it."""

    name = "devices.edge"
    label = "device_edge"
    verbose_name = "Device edge"

    def ready(self) -> None:
        from ota_project.signals import worker_exiting

        # A web worker's check-ins answered from memory are written before it exits (devices.edge.quiet).
        worker_exiting.connect(_flush_at_worker_exit, dispatch_uid="devices.edge.quiet")


def _flush_at_worker_exit(sender: object, **kwargs: object) -> None:
    from devices.edge.quiet import last_seen_flush

    last_seen_flush()
