"""factory_boy factories for every domain model (shared by all test modules)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals.models import ChangeRequest, ChangeTemplate
from devices.firmware.models import FirmwareArtifact, FirmwareRelease
from devices.models import Device, HardwareModel, Region, Tag

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def roles(self, create: bool, extracted: list[str] | None, **kwargs: object) -> None:
        self.save()
        for name in extracted or []:
            self.groups.add(Group.objects.get(name=name))


class HardwareModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = HardwareModel
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"tcu-model-{n}")
    family = "tcu-4g"
    revision = "r2"
    validation_checks = factory.LazyFunction(lambda: ["boot_ok", "modem_attach"])
    partition_layout = factory.LazyFunction(lambda: {"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 268435456})


class RegionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Region
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"region-{n}")
    name = factory.LazyAttribute(lambda r: r.code.title())
    time_zone = "Europe/Berlin"


class TagFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tag
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"tag-{n}")


class DeviceFactory(factory.django.DjangoModelFactory):
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

    @factory.post_generation
    def tags(self, create: bool, extracted: list[str] | None, **kwargs: object) -> None:
        for name in extracted or []:
            self.tags.add(Tag.objects.get_or_create(name=name)[0])


class FirmwareArtifactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FirmwareArtifact
        django_get_or_create = ("sha256",)

    sha256 = factory.Sequence(lambda n: hashlib.sha256(f"artifact-{n}".encode()).hexdigest())
    size_bytes = 1024
    storage_path = factory.LazyAttribute(lambda a: f"{a.sha256[:2]}/{a.sha256}")


class FirmwareReleaseFactory(factory.django.DjangoModelFactory):
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

    @factory.post_generation
    def hardware_models(self, create: bool, extracted: list[HardwareModel] | None, **kwargs: object) -> None:
        if extracted:
            self.hardware_models.set(extracted)


class ChangeTemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ChangeTemplate

    name = factory.Sequence(lambda n: f"Monthly security patch {n}")
    description = "Pre-approved monthly patch for the stable channel."


class ChangeRequestFactory(factory.django.DjangoModelFactory):
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
