from django.apps import AppConfig


class FirmwareConfig(AppConfig):
    """Firmware releases and their content-addressed artifact store (depends only on the device inventory)."""

    name = "devices.firmware"
    label = "firmware"
    verbose_name = "Firmware releases"
