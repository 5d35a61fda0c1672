"""Forms of the change pages: shapes only; every rule is the services' (their field errors map back here).

The form reads and builds the typed change: initial values come from the change's `scope`, `risk_answers` and
`plan`; the wave formset yields `PlanWave`s and the settings fields the rest of a `RolloutPlan`. `plan_parse` is
the one check: of the settings when the form is cleaned, of the whole plan in the service. Its errors and the
services' are nested as the input is (`rollout_plan > waves > 2 > cohort`); `add_service_errors` puts each message
on the field its path names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

from django import forms
from django.forms import BaseFormSet, formset_factory

from approvals.choices import ChangeStatus, ChangeType, QuestionKind, RiskLevel
from approvals.models import ChangeRequest, ChangeTemplate, RiskQuestion
from approvals.plans import ABORT_POLICIES, PROMOTION_MODES, Cohort, PlanWave, RolloutPlan, default_plan, plan_parse
from devices.choices import VehicleType
from devices.firmware.models import FirmwareRelease
from devices.models import HardwareModel, Region, Tag
from devices.scope import FILTER_KEYS, SCOPE_KEYS, TargetScope
from ota_project.errors import DomainError, InvalidInput
from ota_project.parsers import JSONBodyError, json_loads_strict
from ota_project.web.datetime_input import ZonedDateTimeField
from ota_project.web.forms import form_field

# Service fields the form passes on as cleaned; the scope, the answers and the plan are built from several fields.
PLAIN_FIELDS = (
    "title",
    "change_type",
    "template",
    "emergency_reason",
    "justification",
    "release",
    "rollback_release",
    "impact_analysis",
    "test_evidence_summary",
    "requested_window_start",
    "requested_window_end",
)
WAVE_FIELD_FOR = {"cohort": "cohort_kind"}
YES_NO = [("", "Not answered"), ("true", "Yes"), ("false", "No")]


def _to_seconds(value: datetime) -> datetime:
    """What a date-and-time input can show: to the second (so an untouched field reads back unchanged)."""
    return value.astimezone(UTC).replace(microsecond=0)


class WaveForm(forms.Form):
    """One wave of the rollout plan."""

    name = forms.CharField(label="Wave name", max_length=64)
    cohort_kind = forms.ChoiceField(
        label="Cohort",
        choices=[("pilot", "Pilot devices"), ("percent", "Percent of the rest"), ("count", "Number of devices")],
    )
    cohort_value = forms.IntegerField(
        label="Cohort size", required=False, help_text="Percent (1-100) or number of devices; empty for pilot."
    )
    soak_seconds = forms.IntegerField(label="Soak time (seconds)", min_value=0)
    min_sample = forms.IntegerField(label="Minimum sample (devices)", min_value=1)
    success_threshold = forms.FloatField(label="Success threshold (0-1)")
    failure_threshold = forms.FloatField(label="Failure threshold (0-1)")
    promotion = forms.ChoiceField(label="Promotion", choices=[(m, m.capitalize()) for m in PROMOTION_MODES])
    stratify = forms.BooleanField(label="Stratify by model and region", required=False)

    @staticmethod
    def initial_for(wave: PlanWave) -> dict[str, Any]:
        """The fields' initial values for one wave of a plan."""
        return {
            "name": wave.name,
            "cohort_kind": wave.cohort.kind,
            "cohort_value": wave.cohort.value,
            "soak_seconds": wave.soak_seconds,
            "min_sample": wave.min_sample,
            "success_threshold": wave.success_threshold,
            "failure_threshold": wave.failure_threshold,
            "promotion": wave.promotion,
            "stratify": bool(wave.stratify),
        }

    def to_wave(self) -> PlanWave:
        """The plan's wave from the cleaned fields (its rules are checked with the whole plan)."""
        data = self.cleaned_data
        kind = data["cohort_kind"]
        return PlanWave(
            name=data["name"],
            cohort=Cohort(kind, None if kind == "pilot" else data["cohort_value"]),
            soak_seconds=data["soak_seconds"],
            min_sample=data["min_sample"],
            success_threshold=data["success_threshold"],
            failure_threshold=data["failure_threshold"],
            promotion=data["promotion"],
            stratify=True if data["stratify"] else None,  # an unticked box leaves it unstated, as most plans do
        )


class BaseWaveFormSet(BaseFormSet):
    """The plan's waves in order; removed waves are left out."""

    def kept_forms(self) -> list[WaveForm]:
        """The wave forms the requester did not tick for removal, in order (the plan's wave i is the i-th)."""
        return [f for f in self.forms if not (f.is_valid() and f.cleaned_data.get("DELETE"))]

    def waves(self) -> list[PlanWave]:
        return [f.to_wave() for f in self.kept_forms() if f.is_valid()]


MAX_WAVE_FORMS = 20
# formset_factory builds a subclass of `formset` (the stubs only know it is some BaseFormSet).
WaveFormSet = cast(
    type[BaseWaveFormSet],
    formset_factory(WaveForm, formset=BaseWaveFormSet, extra=0, can_delete=True, max_num=MAX_WAVE_FORMS),
)


def _names(queryset: Iterable[str]) -> list[tuple[str, str]]:
    return [(name, name) for name in queryset]


class _ReleaseChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.version} (counter {obj.release_counter})"


class ChangeForm(forms.Form):
    """A change request as the requester files or edits it; the services check every rule on save."""

    title = forms.CharField(label="Title", max_length=200)
    change_type = forms.ChoiceField(label="Change type", choices=ChangeType.choices, initial=ChangeType.NORMAL)
    template = forms.ModelChoiceField(
        label="Template (standard changes)",
        queryset=ChangeTemplate.objects.filter(is_active=True).order_by("name"),
        required=False,
        empty_label="No template",
    )
    emergency_reason = forms.CharField(
        label="Emergency reason", widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=5_000
    )
    justification = forms.CharField(label="Justification", widget=forms.Textarea(attrs={"rows": 4}), max_length=10_000)
    release = _ReleaseChoiceField(label="Release to roll out", queryset=FirmwareRelease._default_manager.none())
    rollback_release = _ReleaseChoiceField(label="Rollback release", queryset=FirmwareRelease._default_manager.none())
    scope_hardware_models = forms.MultipleChoiceField(
        label="Hardware models", required=False, widget=forms.CheckboxSelectMultiple
    )
    scope_regions = forms.MultipleChoiceField(label="Regions", required=False, widget=forms.CheckboxSelectMultiple)
    scope_vehicle_types = forms.MultipleChoiceField(
        label="Vehicle types", required=False, widget=forms.CheckboxSelectMultiple, choices=VehicleType.choices
    )
    scope_tags = forms.MultipleChoiceField(label="Tags", required=False, widget=forms.CheckboxSelectMultiple)
    scope_devices = forms.CharField(
        label="Or an explicit list of device serials",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Separated by spaces, commas or new lines; cannot be combined with the filters above.",
    )
    impact_analysis = forms.CharField(
        label="Impact analysis", widget=forms.Textarea(attrs={"rows": 4}), max_length=10_000
    )
    test_evidence_summary = forms.CharField(
        label="Test evidence summary", widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=10_000
    )
    requested_window_start = ZonedDateTimeField(label="Requested window start")
    requested_window_end = ZonedDateTimeField(label="Requested window end")
    abort_policy = forms.ChoiceField(
        label="When a wave fails",
        choices=[(p, p.replace("_", " ").capitalize()) for p in ABORT_POLICIES],
        initial="halt_and_rollback",
    )
    plan_settings = forms.CharField(
        label="Other plan settings (JSON)",
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "mono"}),
        help_text="Monitoring interval, deadlines, retries, pacing, maintenance windows (local time per region), "
        "blackout windows (UTC) and health gates on post-update signals, e.g. "
        '"health_gates": [{"indicator": "gps_fix_s", "tolerance": 0.1, "significance": 0.05, "min_sample": 20}].',
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        releases = FirmwareRelease._default_manager.order_by("-created_at", "-id")
        release_field = form_field(self, "release", forms.ModelChoiceField)
        rollback_field = form_field(self, "rollback_release", forms.ModelChoiceField)
        release_field.queryset = rollback_field.queryset = releases
        form_field(self, "scope_hardware_models", forms.ChoiceField).choices = _names(
            HardwareModel.objects.order_by("name").values_list("name", flat=True)
        )
        form_field(self, "scope_regions", forms.ChoiceField).choices = [
            (code, f"{code} ({name})") for code, name in Region.objects.order_by("code").values_list("code", "name")
        ]
        form_field(self, "scope_tags", forms.ChoiceField).choices = _names(
            Tag.objects.order_by("name").values_list("name", flat=True)
        )
        self.questions = list(RiskQuestion.objects.filter(is_active=True, source="requester").order_by("order", "key"))
        for question in self.questions:
            self.fields[f"risk_{question.key}"] = self._question_field(question)
        # Errors the services report about a whole section (scope, plan, risk), shown at the section's top.
        self.section_errors: dict[str, list[str]] = {"scope": [], "plan": [], "risk": []}

    @staticmethod
    def _question_field(question: RiskQuestion) -> forms.Field:
        if question.kind == QuestionKind.BOOLEAN:
            return forms.TypedChoiceField(
                label=question.text,
                choices=YES_NO,
                coerce=lambda v: v == "true",
                empty_value=None,
                required=False,
            )
        if question.kind == QuestionKind.CHOICE:
            return forms.ChoiceField(
                label=question.text,
                choices=[("", "Not answered"), *[(c, c.replace("_", " ")) for c in question.choices]],
                required=False,
            )
        return forms.FloatField(label=question.text, required=False)

    def risk_fields(self) -> list[forms.BoundField]:
        return [self[f"risk_{q.key}"] for q in self.questions]

    def scope_fields(self) -> list[forms.BoundField]:
        return [self[f"scope_{key}"] for key in SCOPE_KEYS]

    def clean_plan_settings(self) -> dict[str, Any]:
        raw = self.cleaned_data["plan_settings"]
        try:
            value = json_loads_strict(raw)
        except JSONBodyError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}.") from exc
        if not isinstance(value, dict):
            raise forms.ValidationError("A JSON object of plan settings.")
        # Here only because these keys would replace the form's own fields; everything else is plan_parse's to check.
        misplaced = sorted({"waves", "abort_policy"} & set(value))
        if misplaced:
            raise forms.ValidationError(f"Set {', '.join(misplaced)} in the fields above, not here.")
        return value

    def clean(self) -> dict[str, Any]:
        """The settings become a checked plan (over the default waves, which the formset's replace): plan_parse
        is their one check, and its errors land on the settings field like the services' do."""
        cleaned = super().clean() or {}
        settings = cleaned.get("plan_settings")
        if isinstance(settings, dict):
            try:
                cleaned["plan_settings"] = plan_parse({**default_plan().to_json(), **settings})
            except InvalidInput as exc:
                add_service_errors(self, exc)
        return cleaned

    def target_scope(self) -> TargetScope:
        """The scope the filled filters, or the explicit device list, name (sorted, as a checked scope is)."""
        data = self.cleaned_data
        devices = str(data.get("scope_devices") or "").replace(",", " ").split()
        filters = {key: tuple(sorted(set(data.get(f"scope_{key}") or ()))) for key in FILTER_KEYS}
        return TargetScope(**filters, devices=tuple(sorted(set(devices))))

    def risk_answers(self) -> dict[str, Any]:
        """The answered questions (a whole number typed as 3.0 is the answer 3)."""
        answers: dict[str, Any] = {}
        for question in self.questions:
            value = self.cleaned_data.get(f"risk_{question.key}")
            if value is not None and value != "":
                answers[question.key] = int(value) if isinstance(value, float) and value.is_integer() else value
        return answers

    def rollout_plan(self, waves: Sequence[PlanWave]) -> RolloutPlan:
        """The formset's waves with the abort policy and the settings (the defaults while those are invalid, for
        the live preview); not yet checked: the service checks the whole plan with plan_parse."""
        settings = self.cleaned_data.get("plan_settings")
        return replace(
            settings if isinstance(settings, RolloutPlan) else default_plan(),
            waves=tuple(waves),
            abort_policy=self.cleaned_data.get("abort_policy", ""),
        )

    def service_fields(self, waves: Sequence[PlanWave]) -> dict[str, Any]:
        """The keyword arguments of `change_create` / `change_update`: typed scope and plan, the answers."""
        return {
            **{name: self.cleaned_data[name] for name in PLAIN_FIELDS},
            "target_scope": self.target_scope(),
            "risk_answers": self.risk_answers(),
            "rollout_plan": self.rollout_plan(waves),
        }

    def edited_fields(self, fields: Mapping[str, Any], change: ChangeRequest) -> dict[str, Any]:
        """The fields whose typed value differs from the change's as this form shows it (times to the second, the
        plan as `shown_plan` reads it, the answers to the questions on the form): an untouched edit sends nothing,
        so it voids no approval."""
        shown: dict[str, Any] = {name: getattr(change, name) for name in PLAIN_FIELDS}
        shown.update(
            requested_window_start=_to_seconds(change.requested_window_start),
            requested_window_end=_to_seconds(change.requested_window_end),
            target_scope=change.scope,
            risk_answers={key: answer for key, answer in change.risk_answers.items() if f"risk_{key}" in self.fields},
            rollout_plan=shown_plan(change),
        )
        return {name: value for name, value in fields.items() if value != shown[name]}

    def error_place(
        self, path: Sequence[str], wave_forms: Sequence[forms.Form]
    ) -> tuple[forms.Form, str | None, list[str]]:
        """Where an error at `path` goes: a form and its field, a section of this form (scope, risk, plan) or None
        (the form's top); and the keys of the path the message must still name."""
        match path:
            case ("target_scope", key, *rest) if f"scope_{key}" in self.fields:
                return self, f"scope_{key}", rest
            case ("target_scope", *rest):
                return self, "scope", [key for key in rest if key != "target_scope"]  # that key: the whole scope
            case ("risk_answers", key, *rest) if f"risk_{key}" in self.fields:
                return self, f"risk_{key}", rest
            case ("risk_answers" | "risk_level", *rest):
                return self, "risk", rest
            case ("rollout_plan", "waves", index, *rest) if index.isdigit():
                position, name = int(index), WAVE_FIELD_FOR.get(rest[0], rest[0]) if rest else ""
                if position < len(wave_forms) and name in wave_forms[position].fields:
                    return wave_forms[position], name, rest[1:]
                return self, "plan", [f"wave {position + 1}", *rest]
            case ("rollout_plan",) | ("rollout_plan", "waves"):
                return self, "plan", []
            case ("rollout_plan", "abort_policy", *rest):
                return self, "abort_policy", rest
            case ("rollout_plan", key, *rest):
                # Plan-wide settings, the regions they name and unknown keys: all typed in the settings JSON.
                return self, "plan_settings", [key.replace("_", " "), *rest]
            case (name, *rest) if name in self.fields:
                return self, name, rest
            case (name, *rest):
                return self, None, [name.replace("_", " "), *rest]
        return self, None, []


def shown_plan(change: ChangeRequest) -> RolloutPlan | None:
    """The change's plan as the form shows it (an unticked stratify box is "not stated"); None without a plan or
    when the stored plan no longer parses (the requester then starts over)."""
    try:
        plan = change.plan
    except DomainError:
        return None
    if plan is None:
        return None
    return replace(plan, waves=tuple(replace(wave, stratify=wave.stratify or None) for wave in plan.waves))


def initial_values(change: ChangeRequest | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The form's and the waves' initial values, read from the typed change; sensible defaults for a new one."""
    plan = default_plan() if change is None else shown_plan(change)
    settings = plan or default_plan()
    values: dict[str, Any] = {
        "change_type": ChangeType.NORMAL,
        "abort_policy": settings.abort_policy,
        "plan_settings": json.dumps(
            {key: value for key, value in settings.to_json().items() if key not in ("waves", "abort_policy")}, indent=2
        ),
    }
    waves = [WaveForm.initial_for(wave) for wave in plan.waves] if plan else []
    if change is None:
        return values, waves
    scope = change.scope
    values.update({name: getattr(change, name) for name in PLAIN_FIELDS})
    values.update(
        requested_window_start=_to_seconds(change.requested_window_start),
        requested_window_end=_to_seconds(change.requested_window_end),
        scope_devices="\n".join(scope.devices),
        **{f"scope_{key}": list(getattr(scope, key)) for key in FILTER_KEYS},
    )
    for key, answer in change.risk_answers.items():
        values[f"risk_{key}"] = ("true" if answer else "false") if isinstance(answer, bool) else answer
    return values, waves


def add_service_errors(form: ChangeForm, error: DomainError, wave_forms: Sequence[forms.Form] = ()) -> None:
    """Put each message of a service's (or the parser's) nested errors where its path says (`error_place`): on a
    field, at the top of a section, or at the top of the form, led by the keys of the path no field names."""
    if not error.fields:
        form.add_error(None, error.message)
        return
    for path, message in _error_leaves(error.fields):
        target, place, said = form.error_place(path, wave_forms)
        text = ": ".join([*said, message])
        if place in form.section_errors:
            form.section_errors[place].append(text)
        else:
            target.add_error(place, text)


def error_lines(detail: Any) -> list[str]:
    """Nested error details as readable lines ("rollout_plan: waves: 2: name: ...")."""
    return [": ".join([*path, message]) for path, message in _error_leaves(detail)]


def _error_leaves(detail: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Each message of nested error details, with the keys that lead to it."""
    if isinstance(detail, Mapping):
        for key, inner in detail.items():
            yield from _error_leaves(inner, (*path, str(key)))
    elif isinstance(detail, list | tuple):
        for inner in detail:
            yield from _error_leaves(inner, path)
    else:
        yield path, str(detail)


class QueueFilterForm(forms.Form):
    """Filters of the CAB queue."""

    q = forms.CharField(
        label="Search",
        required=False,
        max_length=100,
        help_text="CR number, words of the title, release version or author.",
    )
    mine = forms.BooleanField(label="Only changes I filed (any status)", required=False)
    status = forms.ChoiceField(label="Status", required=False, choices=[("", "Awaiting review"), *ChangeStatus.choices])
    change_type = forms.ChoiceField(label="Type", required=False, choices=[("", "Any type"), *ChangeType.choices])
    risk_level = forms.ChoiceField(label="Risk", required=False, choices=[("", "Any risk"), *RiskLevel.choices])


class DecisionForm(forms.Form):
    """A reviewer's decision on the revision they read, with a comment."""

    revision = forms.IntegerField(widget=forms.HiddenInput, min_value=1, max_value=2**31 - 1)
    decision = forms.ChoiceField(
        choices=[("approved", "Approve"), ("rejected", "Reject"), ("changes_requested", "Request changes")]
    )
    comment = forms.CharField(
        label="Comment",
        required=False,
        max_length=5_000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required to reject or to request changes.",
    )


class ReasonForm(forms.Form):
    reason = forms.CharField(label="Reason", max_length=5_000, widget=forms.Textarea(attrs={"rows": 2}))


class CommentForm(forms.Form):
    comment = forms.CharField(label="Review comment", max_length=5_000, widget=forms.Textarea(attrs={"rows": 3}))


class ScheduleForm(forms.Form):
    start = ZonedDateTimeField(label="Start")


class EvidenceForm(forms.Form):
    file = forms.FileField(label="Test evidence file")
