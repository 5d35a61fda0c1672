"""Property tests: policy evaluation over generated approvers and roles; risk rules only ever raise."""

from __future__ import annotations

from itertools import permutations

from hypothesis import given
from hypothesis import strategies as st

from approvals.choices import RISK_ORDER, risk_rank
from approvals.policy import Vote, policy_progress
from approvals.risk import QuestionSpec, RuleSpec, risk_evaluate

ROLES = ["cab_member", "security_officer", "emergency_cab"]

requirements = st.dictionaries(st.sampled_from(ROLES), st.integers(min_value=1, max_value=2), max_size=3)
votes = st.lists(
    st.builds(Vote, st.integers(min_value=1, max_value=6), st.frozensets(st.sampled_from(ROLES), max_size=3)),
    max_size=7,
)


def _brute_force_satisfiable(required: dict[str, int], all_votes: list[Vote], author_id: int) -> bool:
    slots = [role for role, n in required.items() for _ in range(n)]
    voters: dict[int, frozenset[str]] = {}
    for vote in all_votes:
        if vote.approver_id != author_id:
            voters.setdefault(vote.approver_id, vote.roles)
    if len(voters) < len(slots):
        return False
    return any(
        all(role in voters[v] for role, v in zip(slots, chosen, strict=True))
        for chosen in permutations(list(voters), len(slots))
    )


@given(required=requirements, all_votes=votes, author_id=st.integers(min_value=1, max_value=6))
def test_policy_is_satisfied_exactly_when_distinct_people_fill_every_slot(required, all_votes, author_id):
    progress = policy_progress(required, all_votes, author_id=author_id)
    assert progress.satisfied == _brute_force_satisfiable(required, all_votes, author_id)


@given(required=requirements, all_votes=votes, author_id=st.integers(min_value=1, max_value=6))
def test_author_never_counts_and_each_person_fills_at_most_one_slot(required, all_votes, author_id):
    progress = policy_progress(required, all_votes, author_id=author_id)
    counted = [voter for voters in progress.filled.values() for voter in voters]
    assert author_id not in counted
    assert len(counted) == len(set(counted))
    first_roles: dict[int, frozenset[str]] = {}
    for vote in all_votes:
        first_roles.setdefault(vote.approver_id, vote.roles)
    for role, voters in progress.filled.items():
        assert len(voters) <= required[role]
        assert all(role in first_roles[v] for v in voters)


QUESTIONS = [
    QuestionSpec("safety", "boolean", "requester", (), {"true": 4, "false": 0}),
    QuestionSpec("share", "number", "fleet_share_percent", (), {"bands": [[0, 0], [5, 1], [20, 3], [50, 5]]}),
    QuestionSpec("component", "choice", "requester", ("app", "boot"), {"app": 0, "boot": 4}),
]
BANDS = [("low", 0), ("moderate", 3), ("high", 6), ("critical", 10)]
answers = st.fixed_dictionaries(
    {
        "safety": st.booleans(),
        "share": st.floats(min_value=0, max_value=100, allow_nan=False),
        "component": st.sampled_from(["app", "boot"]),
    }
)
rules = st.lists(
    st.builds(
        RuleSpec,
        st.text(min_size=1, max_size=5),
        st.sampled_from(["safety", "share", "component"]),
        st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]),
        st.one_of(st.booleans(), st.integers(0, 100), st.sampled_from(["app", "boot"])),
        st.sampled_from(list(RISK_ORDER)),
    ),
    max_size=5,
)


@given(answers=answers, rule_set=rules, extra=rules)
def test_risk_rules_only_raise(answers, rule_set, extra):
    base = risk_evaluate(QUESTIONS, BANDS, [], answers)
    with_rules = risk_evaluate(QUESTIONS, BANDS, rule_set, answers)
    with_more = risk_evaluate(QUESTIONS, BANDS, rule_set + extra, answers)
    assert with_rules.score == base.score
    assert risk_rank(with_rules.level) >= risk_rank(base.level) == risk_rank(with_rules.score_level)
    assert risk_rank(with_more.level) >= risk_rank(with_rules.level)


def test_safety_rule_raises_low_score_to_high():
    rule = RuleSpec("safety is high", "safety", "eq", True, "high")
    result = risk_evaluate(QUESTIONS, BANDS, [rule], {"safety": True, "share": 0.0, "component": "app"})
    assert (result.score, result.score_level, result.level, result.raised_by) == (
        4,
        "moderate",
        "high",
        ["safety is high"],
    )
