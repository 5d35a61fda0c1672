"""Default risk questionnaire, level bands, raising rules and approval policy (administrators may change them)."""
from django.db import migrations

QUESTIONS = [
    # key, text, kind, source, choices, scoring, order
    ("safety_relevant", "Does the release change a safety-relevant component (eCall, brakes/ADAS gateway, CAN write access)?",
     "boolean", "requester", [], {"true": 4, "false": 0}, 10),
    ("component", "Which part of the unit does the release change most deeply?", "choice", "requester",
     ["application", "connectivity", "modem_firmware", "bootloader"],
     {"application": 0, "connectivity": 2, "modem_firmware": 3, "bootloader": 4}, 20),
    ("fleet_share_percent", "Share of the active fleet targeted (%)", "number", "fleet_share_percent", [],
     {"bands": [[0, 0], [5, 1], [20, 3], [50, 5]]}, 30),
    ("hardware_models_touched", "Hardware models targeted", "number", "hardware_models_touched", [],
     {"bands": [[0, 0], [2, 1], [4, 2]]}, 40),
    ("tested_on_all_models", "Was the release tested on every targeted hardware model?", "boolean", "requester", [],
     {"true": 0, "false": 3}, 50),
    ("rollback_tested", "Was the rollback to the previous release tested?", "boolean", "requester", [],
     {"true": 0, "false": 3}, 60),
    ("security_fix", "Does the release fix a security vulnerability?", "boolean", "requester", [],
     {"true": 1, "false": 0}, 70),
]
BANDS = [("low", 0), ("moderate", 3), ("high", 6), ("critical", 10)]
RULES = [
    # name, question, operator, value, minimum level
    ("Safety-relevant changes are at least high", "safety_relevant", "eq", True, "high"),
    ("More than 20% of the fleet is at least high", "fleet_share_percent", "gt", 20, "high"),
    ("Bootloader changes are at least high", "component", "eq", "bootloader", "high"),
    ("Untested rollback is at least moderate", "rollback_tested", "eq", False, "moderate"),
]
# change type -> risk level -> ({role: count}, retrospective_days, allowed)
POLICY = {
    "normal": {
        "low": ({"cab_member": 1}, None, True),
        "moderate": ({"cab_member": 2}, None, True),
        "high": ({"cab_member": 2, "security_officer": 1}, None, True),
        "critical": ({"cab_member": 3, "security_officer": 1}, None, True),
    },
    "standard": {
        "low": ({"cab_member": 1}, None, True),
        "moderate": ({"cab_member": 1}, None, True),
        "high": ({}, None, False),
        "critical": ({}, None, False),
    },
    "emergency": {
        "low": ({"emergency_cab": 1}, 5, True),
        "moderate": ({"emergency_cab": 1}, 5, True),
        "high": ({"emergency_cab": 1}, 3, True),
        "critical": ({"emergency_cab": 1, "security_officer": 1}, 3, True),
    },
}


def load_defaults(apps, schema_editor):
    RiskQuestion = apps.get_model("approvals", "RiskQuestion")
    RiskLevelBand = apps.get_model("approvals", "RiskLevelBand")
    RiskRule = apps.get_model("approvals", "RiskRule")
    ApprovalPolicy = apps.get_model("approvals", "ApprovalPolicy")
    ApprovalRequirement = apps.get_model("approvals", "ApprovalRequirement")
    questions = {}
    for key, text, kind, source, choices, scoring, order in QUESTIONS:
        questions[key] = RiskQuestion.objects.create(
            key=key, text=text, kind=kind, source=source, choices=choices, scoring=scoring, order=order
        )
    for level, min_score in BANDS:
        RiskLevelBand.objects.create(level=level, min_score=min_score)
    for name, key, operator, value, level in RULES:
        RiskRule.objects.create(name=name, question=questions[key], operator=operator, value=value, minimum_level=level)
    for change_type, levels in POLICY.items():
        for level, (requirements, retrospective_days, allowed) in levels.items():
            policy = ApprovalPolicy.objects.create(
                change_type=change_type, risk_level=level, retrospective_days=retrospective_days, allowed=allowed
            )
            for role, count in requirements.items():
                ApprovalRequirement.objects.create(policy=policy, role=role, count=count)


class Migration(migrations.Migration):
    dependencies = [("approvals", "0003_role_groups")]
    operations = [migrations.RunPython(load_defaults, migrations.RunPython.noop)]
