from django.apps import AppConfig


class DeviceEdgeConfig(AppConfig):
    """The device API and its TLS edge (nginx): sub-app so the device PKI's command (`devices`) lives with it."""

    name = "devices.edge"
    label = "device_edge"
    verbose_name = "Device edge"
