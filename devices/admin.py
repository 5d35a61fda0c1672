"""Admin for the fleet inventory: browse everything; every change goes through devices.services."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from devices import services
from devices.models import Device, HardwareModel, Region, Tag
from devices.validators import (
    MAX_REASON_LENGTH,
    validate_partition_layout,
    validate_time_zone,
    validate_validation_checks,
)
from ota_project.errors import DomainError
from ota_project.roles import Role, acting_user, has_role


def _is_operator(request: HttpRequest) -> bool:
    return bool(request.user.is_superuser or has_role(request.user, Role.OPERATOR))


def _form_errors(form: forms.ModelForm, error: DomainError) -> None:
    for name, messages_ in (error.fields or {"__all__": [error.message]}).items():
        target = name if name in form.fields else None
        for message in messages_ if isinstance(messages_, list) else [messages_]:
            form.add_error(target, str(message))


class ServiceModelForm(forms.ModelForm):
    """A model form whose clean() asks the service instead of the model (services hold the rules).

    The form parses what a model field cannot say about its value with the same validators as the API
    (devices.validators), so the messages are the API's; the service parses again and adds its rules.
    """

    field_validators: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, validator in self.field_validators.items():
            if name in self.fields:
                self.fields[name].validators.append(validator)

    request: HttpRequest  # set on the class by ServiceAdmin.get_form

    def service_call(self) -> Model:
        raise NotImplementedError

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean()
        if not self.errors:
            try:
                # Run the real write inside clean so that rule violations show on the form; save_model is a no-op.
                self.instance = self.service_call()
            except DomainError as error:
                _form_errors(self, error)
        return cleaned

    def _post_clean(self) -> None:
        # Skip ModelForm's construct_instance/full_clean: the service validates and writes.
        pass


class HardwareModelForm(ServiceModelForm):
    field_validators = {
        "validation_checks": validate_validation_checks,
        "partition_layout": validate_partition_layout,
    }

    class Meta:
        model = HardwareModel
        fields = [
            "name",
            "family",
            "revision",
            "update_channel",
            "signing_scheme",
            "validation_checks",
            "partition_layout",
        ]

    def service_call(self) -> HardwareModel:
        data = dict(self.cleaned_data)
        actor = acting_user(self.request)
        if self.instance.pk is None:
            return services.hardware_model_create(actor=actor, **data)
        data.pop("name", None)
        # The form's fields are the model's changeable fields, cleaned by the model form.
        changes = cast(services.HardwareModelChanges, data)
        return services.hardware_model_update(actor=actor, hardware_model=self.instance, changes=changes)


BUDGET_FIELDS = ["poll_interval_seconds", "max_checkins_per_window", "max_concurrent_downloads"]


class RegionForm(ServiceModelForm):
    field_validators = {"time_zone": validate_time_zone}

    class Meta:
        model = Region
        fields = ["code", "name", "time_zone", *BUDGET_FIELDS]

    def service_call(self) -> Region:
        actor = acting_user(self.request)
        if self.instance.pk is None:
            return services.region_create(actor=actor, **self.cleaned_data)
        # Code and time zone are read-only once created (computed maintenance windows depend on them).
        changes = cast(
            services.RegionChanges,
            {key: value for key, value in self.cleaned_data.items() if key in ("name", *BUDGET_FIELDS)},
        )
        return services.region_update(actor=actor, region=self.instance, changes=changes)


class ServiceAdmin(admin.ModelAdmin):
    """Forms write through services (in clean); the admin never saves domain objects itself."""

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"request": request})

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """The service already wrote (and recorded) the change in the form's clean()."""

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Nothing related to save: the service did it."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(HardwareModel)
class HardwareModelAdmin(ServiceAdmin):
    form = HardwareModelForm
    list_display = ["name", "family", "revision", "update_channel", "signing_scheme"]
    list_filter = ["update_channel", "signing_scheme", "family"]
    search_fields = ["name", "family"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # The name is the hardware id that releases and metadata refer to.
        return ["name", "created_at"] if obj is not None else []


@admin.register(Region)
class RegionAdmin(ServiceAdmin):
    form = RegionForm
    list_display = ["code", "name", "time_zone", *BUDGET_FIELDS]
    search_fields = ["code", "name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Maintenance windows already computed depend on the code and the zone: they never change.
        return ["code", "time_zone"] if obj is not None else []


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name"]
    search_fields = ["name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tags are created by device services on first use

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeviceActionForm(ActionForm):
    reason = forms.CharField(
        required=False,
        max_length=MAX_REASON_LENGTH,
        help_text="Required to quarantine.",
        widget=forms.TextInput({"size": 40}),
    )


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    """Read-only inventory with status actions; inventory changes go through the API or the importer."""

    action_form = DeviceActionForm
    actions = ["quarantine", "release"]
    list_display = [
        "serial",
        "vin",
        "hardware_model",
        "region",
        "vehicle_type",
        "status",
        "installed_version",
        "reported_version",
        "last_seen_at",
    ]
    list_filter = ["status", "hardware_model", "region", "vehicle_type", "usage_profile", "tags"]
    search_fields = ["serial", "vin"]
    list_select_related = ["hardware_model", "region"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return _is_operator(request)

    def _apply(self, request: HttpRequest, devices: QuerySet[Device], service: Any, verb: str) -> None:
        reason = request.POST.get("reason", "")
        done, refused = 0, []
        for device in devices:
            try:
                service(actor=acting_user(request), device=device, reason=reason)
                done += 1
            except (DomainError, ValidationError) as error:
                refused.append(f"{device.serial}: {getattr(error, 'message', error)}")
        if done:
            self.message_user(request, f"{verb.capitalize()}d {done} device(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, f"Not {verb}d: " + "; ".join(refused[:20]), messages.ERROR)

    @admin.action(description="Quarantine selected devices (reason required)", permissions=["operate"])
    def quarantine(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        self._apply(request, queryset, services.device_quarantine, "quarantine")

    @admin.action(description="Release selected devices from quarantine", permissions=["operate"])
    def release(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        self._apply(request, queryset, services.device_release_from_quarantine, "release")
