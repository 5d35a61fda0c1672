"""Risk assessment: score the questionnaire, map the score to a level, then let rules raise (never lower) it.

The questionnaire, the level bands and the rules are rows an administrator edits; `risk_evaluate` is a pure
function over plain data so the "rules only raise" property can be tested exhaustively.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from approvals.choices import RISK_ORDER, AnswerSource, QuestionKind, RiskLevel, RuleOperator, risk_rank
from approvals.models import RiskLevelBand, RiskQuestion, RiskRule
from ota_project.errors import InvalidInput


@dataclass(frozen=True)
class QuestionSpec:
    key: str
    kind: str
    source: str
    choices: tuple[str, ...]
    scoring: Mapping[str, Any]


@dataclass(frozen=True)
class RuleSpec:
    name: str
    question_key: str
    operator: str
    value: Any
    minimum_level: str


@dataclass(frozen=True)
class RiskAssessment:
    """Outcome of the questionnaire: score, the level the score gives, the final level and what raised it."""

    answers: dict[str, Any]
    score: int
    score_level: str
    level: str
    raised_by: list[str] = field(default_factory=list)
    points: dict[str, int] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)


def _points(question: QuestionSpec, answer: Any) -> int:
    if answer is None:
        return 0
    if question.kind == QuestionKind.BOOLEAN:
        return int(question.scoring.get("true" if answer else "false", 0))
    if question.kind == QuestionKind.CHOICE:
        return int(question.scoring.get(str(answer), 0))
    reached = [int(points) for minimum, points in question.scoring.get("bands", []) if answer >= minimum]
    return reached[-1] if reached else 0


def _rule_holds(operator: str, answer: Any, value: Any) -> bool:
    if answer is None:
        return False
    try:
        if operator == RuleOperator.EQ:
            return bool(answer == value)
        if operator == RuleOperator.NE:
            return bool(answer != value)
        if operator == RuleOperator.GT:
            return bool(answer > value)
        if operator == RuleOperator.GTE:
            return bool(answer >= value)
        if operator == RuleOperator.LT:
            return bool(answer < value)
        if operator == RuleOperator.LTE:
            return bool(answer <= value)
        if operator == RuleOperator.IN:
            return answer in value
    except TypeError:
        return False
    return False


def risk_evaluate(
    questions: Sequence[QuestionSpec],
    bands: Sequence[tuple[str, int]],
    rules: Sequence[RuleSpec],
    answers: Mapping[str, Any],
) -> RiskAssessment:
    """Pure scoring: sum points, take the highest band reached, then raise by every rule that holds."""
    points = {q.key: _points(q, answers.get(q.key)) for q in questions}
    score = sum(points.values())
    score_level = RiskLevel.LOW.value
    for level, min_score in sorted(bands, key=lambda band: band[1]):
        if score >= min_score:
            score_level = level
    level = score_level
    raised_by = []
    for rule in rules:
        if _rule_holds(rule.operator, answers.get(rule.question_key), rule.value):
            if risk_rank(rule.minimum_level) > risk_rank(level):
                raised_by.append(rule.name)
            level = RISK_ORDER[max(risk_rank(level), risk_rank(rule.minimum_level))]
    unanswered = [q.key for q in questions if answers.get(q.key) is None]
    return RiskAssessment(dict(answers), score, score_level, level, raised_by, points, unanswered)


def risk_questionnaire() -> list[QuestionSpec]:
    """The active questions as plain specs, in display order."""
    return [
        QuestionSpec(q.key, q.kind, q.source, tuple(q.choices), q.scoring)
        for q in RiskQuestion.objects.filter(is_active=True).order_by("order", "key")
    ]


def _rules() -> list[RuleSpec]:
    return [
        RuleSpec(r.name, r.question.key, r.operator, r.value, r.minimum_level)
        for r in RiskRule.objects.filter(is_active=True, question__is_active=True).select_related("question")
    ]


def risk_answers_validate(answers: Any, questions: Sequence[QuestionSpec]) -> dict[str, Any]:
    """Check the requester's answers against the questionnaire (types, choices); computed answers are refused."""
    if not isinstance(answers, dict):
        raise InvalidInput("Risk answers must be an object.", fields={"risk_answers": ["Must be an object."]})
    by_key = {q.key: q for q in questions}
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    for key, answer in answers.items():
        question = by_key.get(key)
        if question is None:
            errors[key] = ["Unknown question."]
        elif question.source != AnswerSource.REQUESTER:
            errors[key] = ["Computed from the change itself; do not answer it."]
        elif answer is None:
            continue
        elif question.kind == QuestionKind.BOOLEAN and not isinstance(answer, bool):
            errors[key] = ["Must be true or false."]
        elif question.kind == QuestionKind.CHOICE and answer not in question.choices:
            errors[key] = [f"Must be one of: {', '.join(question.choices)}."]
        elif question.kind == QuestionKind.NUMBER and (isinstance(answer, bool) or not isinstance(answer, int | float)):
            errors[key] = ["Must be a number."]
        else:
            cleaned[key] = answer
    if errors:
        raise InvalidInput("Some risk answers are invalid.", fields={"risk_answers": errors})
    return cleaned


def risk_assess(*, answers: Mapping[str, Any], scope_summary: Mapping[str, Any]) -> RiskAssessment:
    """Assess a change: requester answers plus answers computed from its scope, against the current rules."""
    questions = risk_questionnaire()
    computed: dict[str, Any] = {
        AnswerSource.FLEET_SHARE_PERCENT: scope_summary.get("fleet_share_percent", 0.0),
        AnswerSource.HARDWARE_MODELS_TOUCHED: len(scope_summary.get("by_hardware_model", {})),
        AnswerSource.DEVICES_TARGETED: scope_summary.get("devices", 0),
    }
    full = dict(answers)
    for question in questions:
        if question.source != AnswerSource.REQUESTER:
            full[question.key] = computed[question.source]
    bands = list(RiskLevelBand.objects.values_list("level", "min_score"))
    return risk_evaluate(questions, bands, _rules(), full)
