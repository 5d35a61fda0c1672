"""factory_boy factories for every domain model (shared by all test modules).

Each factory is typed with its model (`DjangoModelFactory[Device]`), so call `DeviceFactory.create(...)` (or
`.create_batch(n, ...)`): mypy types the result as a `Device`. Calling the class itself (`DeviceFactory(...)`) does the
same at run time, but factory_boy's metaclass `__call__` is unannotated, so mypy would type the result as a
`DeviceFactory`.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import factory
from django.contrib.auth.models import Group, User
from django.utils import timezone

from approvals.models import ChangeRequest, ChangeTemplate
from devices.firmware.models import FirmwareArtifact, FirmwareRelease
from devices.models import Device, HardwareModel, Region, Tag

PASSWORD = "correct-horse-battery-staple"


# Post-generation hooks are module functions rather than methods: factory_boy calls them with the built model
# instance, not the factory, so their first parameter is typed as the model.


def _add_roles(user: User, create: bool, extracted: list[str] | None, **kwargs: object) -> None:
    user.save()
    for name in extracted or []:
        user.groups.add(Group.objects.get(name=name))


def _add_tags(device: Device, create: bool, extracted: list[str] | None, **kwargs: object) -> None:
    for name in extracted or []:
        device.tags.add(Tag.objects.get_or_create(name=name)[0])


def _set_hardware_models(
    release: FirmwareRelease, create: bool, extracted: list[HardwareModel] | None, **kwargs: object
) -> None:
    if extracted:
        release.hardware_models.set(extracted)


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    roles = factory.post_generation(_add_roles)


class HardwareModelFactory(factory.django.DjangoModelFactory[HardwareModel]):
    class Meta:
        model = HardwareModel
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"tcu-model-{n}")
    family = "tcu-4g"
    revision = "r2"
    validation_checks = factory.LazyFunction(lambda: ["boot_ok", "modem_attach"])
    partition_layout = factory.LazyFunction(lambda: {"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 268435456})


class RegionFactory(factory.django.DjangoModelFactory[Region]):
    class Meta:
        model = Region
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"region-{n}")
    name = factory.LazyAttribute(lambda r: r.code.title())
    time_zone = "Europe/Berlin"


class TagFactory(factory.django.DjangoModelFactory[Tag]):
    class Meta:
        model = Tag
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"tag-{n}")


class DeviceFactory(factory.django.DjangoModelFactory[Device]):
    class Meta:
        model = Device
        skip_postgeneration_save = True

    serial = factory.Sequence(lambda n: f"TCU{n:08d}")
    hardware_model = factory.SubFactory(HardwareModelFactory)
    region = factory.SubFactory(RegionFactory)
    vehicle_type = "heavy_truck"
    usage_profile = "highway"
    network_capabilities = factory.LazyFunction(lambda: ["lte"])
    installed_version = "1.0.0"
    installed_release_counter = 1
    # A device out of service for cause has its reason (a database constraint): the factory gives one.
    status_reason = factory.LazyAttribute(
        lambda device: "set up by the test" if getattr(device, "status", "active") in ("quarantined", "revoked") else ""
    )

    tags = factory.post_generation(_add_tags)


class FirmwareArtifactFactory(factory.django.DjangoModelFactory[FirmwareArtifact]):
    class Meta:
        model = FirmwareArtifact
        django_get_or_create = ("sha256",)

    sha256 = factory.Sequence(lambda n: hashlib.sha256(f"artifact-{n}".encode()).hexdigest())
    size_bytes = 1024
    storage_path = factory.LazyAttribute(lambda a: f"{a.sha256[:2]}/{a.sha256}")


class FirmwareReleaseFactory(factory.django.DjangoModelFactory[FirmwareRelease]):
    class Meta:
        model = FirmwareRelease
        skip_postgeneration_save = True

    version = factory.Sequence(lambda n: f"2.{n}.0")
    release_counter = factory.Sequence(lambda n: n + 10)
    artifact = factory.SubFactory(FirmwareArtifactFactory)
    artifact_name = factory.LazyAttribute(lambda r: f"tcu-{r.version}.bin")
    source_revision = "0123456789abcdef0123456789abcdef01234567"
    builder = "ci-builder-7"
    created_by = factory.SubFactory(UserFactory, roles=["requester"])

    hardware_models = factory.post_generation(_set_hardware_models)


class ChangeTemplateFactory(factory.django.DjangoModelFactory[ChangeTemplate]):
    class Meta:
        model = ChangeTemplate

    name = factory.Sequence(lambda n: f"Monthly security patch {n}")
    description = "Pre-approved monthly patch for the stable channel."


class ChangeRequestFactory(factory.django.DjangoModelFactory[ChangeRequest]):
    """A draft change row built directly (for selector and API read tests; services build real ones)."""

    class Meta:
        model = ChangeRequest

    title = factory.Sequence(lambda n: f"Roll out firmware {n}")
    justification = "Fixes modem reconnect loop."
    release = factory.SubFactory(FirmwareReleaseFactory)
    rollback_release = factory.SubFactory(FirmwareReleaseFactory)
    target_scope = factory.LazyFunction(dict)
    impact_analysis = "Units reboot once; no data loss."
    requested_window_start = factory.LazyFunction(lambda: timezone.now() + timedelta(days=1))
    requested_window_end = factory.LazyFunction(lambda: timezone.now() + timedelta(days=8))
    rollout_plan = factory.LazyFunction(dict)
    author = factory.SubFactory(UserFactory, roles=["requester"])
