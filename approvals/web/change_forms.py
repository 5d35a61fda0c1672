"""Forms of the change pages: shapes only; every rule is the services' (their field errors map back here)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from django import forms
from django.forms import BaseFormSet, formset_factory

from approvals.choices import ChangeStatus, ChangeType, QuestionKind, RiskLevel
from approvals.models import ChangeRequest, ChangeTemplate, RiskQuestion
from approvals.plans import ABORT_POLICIES, PLAN_DEFAULTS, PROMOTION_MODES, Cohort, PlanWave, RolloutPlan, default_plan
from devices.choices import VehicleType
from devices.firmware.models import FirmwareRelease
from devices.models import HardwareModel, Region, Tag
from ota_project.errors import DomainError
from ota_project.parsers import JSONBodyError, json_loads_strict
from ota_project.web.forms import form_field

DATETIME_INPUT_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]
SCOPE_FILTER_FIELDS = {
    "hardware_models": "scope_hardware_models",
    "regions": "scope_regions",
    "vehicle_types": "scope_vehicle_types",
    "tags": "scope_tags",
    "devices": "scope_devices",
}
PLAN_SETTING_KEYS = tuple(PLAN_DEFAULTS)
WAVE_FIELD_FOR = {"cohort": "cohort_kind"}
YES_NO = [("", "Not answered"), ("true", "Yes"), ("false", "No")]


class UtcDateTimeInput(forms.DateTimeInput):
    """A datetime-local input whose value is UTC (the label says so), to the second."""

    input_type = "datetime-local"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs={"step": "1", **(attrs or {})}, format="%Y-%m-%dT%H:%M:%S")


def _utc_field(label: str, **kwargs: Any) -> forms.DateTimeField:
    return forms.DateTimeField(
        label=label, widget=UtcDateTimeInput(), input_formats=DATETIME_INPUT_FORMATS, help_text="UTC.", **kwargs
    )


def _to_seconds(value: datetime) -> datetime:
    """What a datetime input can show: UTC, to the second (so an untouched field reads back unchanged)."""
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

    def to_wave(self) -> PlanWave:
        """The plan's wave from the cleaned fields (its rules are checked with the whole plan)."""
        return wave_from_values(self.cleaned_data)


def wave_from_values(data: Mapping[str, Any]) -> PlanWave:
    """A plan wave from a valid wave form's values (the same path for submitted and initial values)."""
    kind = data["cohort_kind"]
    return PlanWave(
        name=data["name"],
        cohort=Cohort(kind, None if kind == "pilot" else data.get("cohort_value")),
        soak_seconds=data["soak_seconds"],
        min_sample=data["min_sample"],
        success_threshold=data["success_threshold"],
        failure_threshold=data["failure_threshold"],
        promotion=data["promotion"],
        stratify=True if data.get("stratify") else None,
    )


def wave_values(wave: PlanWave) -> dict[str, Any]:
    """Form values for one wave of a plan."""
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


class BaseWaveFormSet(BaseFormSet):
    """The plan's waves in order; removed waves are left out."""

    def kept_forms(self) -> list[WaveForm]:
        """The wave forms the requester did not tick for removal, in order."""
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
    requested_window_start = _utc_field("Requested window start")
    requested_window_end = _utc_field("Requested window end")
    abort_policy = forms.ChoiceField(
        label="When a wave fails",
        choices=[(p, p.replace("_", " ").capitalize()) for p in ABORT_POLICIES],
        initial="halt_and_rollback",
    )
    plan_settings = forms.CharField(
        label="Other plan settings (JSON)",
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "mono"}),
        help_text="Monitoring interval, deadlines, retries, pacing, maintenance windows (local time per region) "
        "and blackout windows (UTC).",
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
        return [self[name] for name in SCOPE_FILTER_FIELDS.values()]

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


def _answer(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def split_serials(raw: str) -> list[str]:
    return [s for s in raw.replace(",", " ").split() if s]


def scope_from_values(values: Mapping[str, Any]) -> dict[str, list[str]]:
    """The target scope from form values: the filled filters, or the explicit device list."""
    scope: dict[str, list[str]] = {}
    for key, name in SCOPE_FILTER_FIELDS.items():
        value = values.get(name)
        items = split_serials(value) if key == "devices" and isinstance(value, str) else list(value or [])
        if items:
            scope[key] = items
    return scope


def answers_from_values(values: Mapping[str, Any], questions: Iterable[RiskQuestion]) -> dict[str, Any]:
    """The requester's risk answers from form values; unanswered questions are left out."""
    answers = {}
    for question in questions:
        value = values.get(f"risk_{question.key}")
        if value is not None and value != "":
            answers[question.key] = _answer(value)
    return answers


def plan_from_values(values: Mapping[str, Any], waves: list[PlanWave]) -> dict[str, Any]:
    """The rollout plan's JSON from the waves, the abort policy and the other settings, for `plan_parse`."""
    plan: dict[str, Any] = {"waves": [wave.to_json() for wave in waves]}
    if values.get("abort_policy"):
        plan["abort_policy"] = values["abort_policy"]
    settings = values.get("plan_settings")
    if isinstance(settings, dict):
        plan.update(settings)
    return plan


def fields_from_values(
    values: Mapping[str, Any], waves: list[PlanWave], questions: Iterable[RiskQuestion]
) -> dict[str, Any]:
    """The keyword arguments of `change_create` / `change_update` from form values."""
    fields = {
        name: values.get(name)
        for name in (
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
    }
    fields["emergency_reason"] = fields["emergency_reason"] or ""
    fields["test_evidence_summary"] = fields["test_evidence_summary"] or ""
    fields["target_scope"] = scope_from_values(values)
    fields["risk_answers"] = answers_from_values(values, questions)
    fields["rollout_plan"] = plan_from_values(values, waves)
    return fields


def initial_values(change: ChangeRequest | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Form and wave initial values: from a change for the edit page, sensible defaults for a new one."""
    if change is None:
        return (
            {"change_type": ChangeType.NORMAL, **plan_values(default_plan())},
            [wave_values(w) for w in default_plan().waves],
        )
    scope = change.scope
    try:
        plan = change.plan
    except DomainError:
        plan = None  # a stored plan that no longer parses: the requester starts over from the defaults
    values: dict[str, Any] = {
        "title": change.title,
        "change_type": change.change_type,
        "template": change.template,
        "emergency_reason": change.emergency_reason,
        "justification": change.justification,
        "release": change.release,
        "rollback_release": change.rollback_release,
        "impact_analysis": change.impact_analysis,
        "test_evidence_summary": change.test_evidence_summary,
        "requested_window_start": _to_seconds(change.requested_window_start),
        "requested_window_end": _to_seconds(change.requested_window_end),
        **plan_values(plan),
        "scope_devices": "\n".join(scope.devices),
        "scope_hardware_models": list(scope.hardware_models),
        "scope_regions": list(scope.regions),
        "scope_vehicle_types": list(scope.vehicle_types),
        "scope_tags": list(scope.tags),
    }
    for key, answer in change.risk_answers.items():
        values[f"risk_{key}"] = ("true" if answer else "false") if isinstance(answer, bool) else answer
    return values, [wave_values(w) for w in plan.waves] if plan else []


def plan_values(plan: RolloutPlan | None) -> dict[str, Any]:
    """Form values for a plan's abort policy and its other settings (the JSON field); defaults without a plan."""
    if plan is None:
        return {"abort_policy": "halt_and_rollback", "plan_settings": json.dumps(PLAN_DEFAULTS, indent=2)}
    settings = {key: value for key, value in plan.to_json().items() if key in PLAN_SETTING_KEYS}
    return {"abort_policy": plan.abort_policy, "plan_settings": json.dumps(settings, indent=2)}


def python_values(initial: Mapping[str, Any], questions: Iterable[RiskQuestion]) -> dict[str, Any]:
    """Initial form values as cleaned data would hold them (parsed plan settings, yes/no as booleans)."""
    values = dict(initial)
    try:
        values["plan_settings"] = json.loads(values.get("plan_settings") or "{}")
    except ValueError:
        values["plan_settings"] = {}
    for question in questions:
        key = f"risk_{question.key}"
        if question.kind == QuestionKind.BOOLEAN and isinstance(values.get(key), str):
            values[key] = values[key] == "true"
    return values


def baseline_fields(change: ChangeRequest, questions: Iterable[RiskQuestion]) -> dict[str, Any]:
    """What the edit form yields when submitted untouched, so only fields the requester changed are sent."""
    initial, waves = initial_values(change)
    return fields_from_values(python_values(initial, questions), [wave_from_values(w) for w in waves], questions)


def flatten_errors(value: Any, prefix: str = "") -> list[str]:
    """Nested service error details as readable lines ("waves 2: name: ...")."""
    if isinstance(value, Mapping):
        lines = []
        for key, inner in value.items():
            label = f"{prefix}{key}: " if not prefix else f"{prefix}{key}: "
            lines.extend(flatten_errors(inner, label))
        return lines
    if isinstance(value, list | tuple):
        return [line for item in value for line in flatten_errors(item, prefix)]
    return [f"{prefix}{value}"]


def apply_service_errors(form: ChangeForm, waves: BaseWaveFormSet, error: DomainError) -> None:
    """Put a service's field errors on the form fields they concern; the rest go to the form or its sections."""
    if not error.fields:
        form.add_error(None, error.message)
        return
    for key, detail in error.fields.items():
        if key == "target_scope":
            _scope_errors(form, detail)
        elif key == "rollout_plan":
            _plan_errors(form, waves, detail)
        elif key in ("risk_answers", "risk_level"):
            _risk_errors(form, detail)
        elif key in form.fields:
            form.add_error(key, flatten_errors(detail))
        else:
            form.add_error(None, [f"{key.replace('_', ' ')}: {line}" for line in flatten_errors(detail)])


def _scope_errors(form: ChangeForm, detail: Any) -> None:
    if not isinstance(detail, Mapping):
        form.section_errors["scope"].extend(flatten_errors(detail))
        return
    for key, inner in detail.items():
        name = SCOPE_FILTER_FIELDS.get(key)
        if name:
            form.add_error(name, flatten_errors(inner))
        else:
            form.section_errors["scope"].extend(flatten_errors(inner))


def _plan_errors(form: ChangeForm, waves: BaseWaveFormSet, detail: Any) -> None:
    if not isinstance(detail, Mapping):
        form.section_errors["plan"].extend(flatten_errors(detail))
        return
    for key, inner in detail.items():
        if key == "waves" and isinstance(inner, Mapping):
            kept = waves.kept_forms()
            for index, wave_errors in inner.items():
                position = int(index) if str(index).isdigit() else -1
                if 0 <= position < len(kept) and isinstance(wave_errors, Mapping):
                    wave_form = kept[position]
                    for wave_key, messages in wave_errors.items():
                        field_name = WAVE_FIELD_FOR.get(wave_key, wave_key)
                        if field_name in wave_form.fields:
                            wave_form.add_error(field_name, flatten_errors(messages))
                        else:
                            form.section_errors["plan"].extend(flatten_errors(messages, f"wave {position + 1}: "))
                else:
                    form.section_errors["plan"].extend(flatten_errors(wave_errors, f"wave {position + 1}: "))
        elif key == "waves":
            form.section_errors["plan"].extend(flatten_errors(inner))
        elif key == "abort_policy":
            form.add_error("abort_policy", flatten_errors(inner))
        else:
            # Plan-wide settings, the regions they name, and unknown keys: all come from the settings JSON.
            form.add_error("plan_settings", flatten_errors(inner, f"{key.replace('_', ' ')}: "))


def _risk_errors(form: ChangeForm, detail: Any) -> None:
    if not isinstance(detail, Mapping):
        form.section_errors["risk"].extend(flatten_errors(detail))
        return
    for key, inner in detail.items():
        name = f"risk_{key}"
        if name in form.fields:
            form.add_error(name, flatten_errors(inner))
        else:
            form.section_errors["risk"].extend(flatten_errors(inner, f"{key}: "))


class QueueFilterForm(forms.Form):
    """Filters of the CAB queue."""

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
    start = _utc_field("Start")


class EvidenceForm(forms.Form):
    file = forms.FileField(label="Test evidence file")
