"""The chaos figures and acceptance checks of a drill report, on hand-made data (rollouts.drill.checks)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rollouts.drill.checks import (
    DeploymentFact,
    FinishedReport,
    acceptance_checks,
    doubly_held,
    duplicated_deployments,
    failed_checks,
    last_offer_at,
    lost_deployments,
    seconds_between,
    threshold_crossed_at,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fact(device: int, status: str, kind: str = "update", rollout: int = 1) -> DeploymentFact:
    return DeploymentFact(rollout, device, kind, status)


@dataclass(frozen=True)
class Offer:
    at: datetime
    sha256: str


# --- lost -----------------------------------------------------------------------------------------------------


def test_a_completed_rollout_loses_a_device_in_scope_that_never_got_a_deployment():
    deployments = [fact(1, "succeeded"), fact(2, "skipped")]  # a skipped device has its reason recorded
    assert lost_deployments(rollout_status="completed", in_scope={1, 2, 3}, deployments=deployments) == 1


def test_a_deployment_still_open_after_the_rollout_ended_is_lost():
    deployments = [fact(1, "succeeded"), fact(2, "downloading"), fact(3, "pending")]
    assert lost_deployments(rollout_status="completed", in_scope={1, 2, 3}, deployments=deployments) == 2


def test_a_rolled_back_rollout_loses_a_device_that_took_the_image_but_got_no_rollback():
    deployments = [
        fact(1, "succeeded"),
        fact(1, "succeeded", kind="rollback"),
        fact(2, "installing"),  # took the new image and is still open: lost twice over (open, and no rollback)
        fact(3, "cancelled"),  # halted before it installed: needs nothing
        fact(4, "rolled_back"),  # fell back on the device by itself: needs nothing
    ]
    assert lost_deployments(rollout_status="rolled_back", in_scope={1, 2, 3, 4, 5}, deployments=deployments) == 2


def test_devices_never_assigned_by_a_halted_rollout_are_not_lost():
    deployments = [fact(1, "rolled_back"), fact(2, "cancelled")]
    assert lost_deployments(rollout_status="aborted", in_scope={1, 2, 3, 4}, deployments=deployments) == 0


def test_nothing_is_called_lost_while_the_rollout_runs():
    assert lost_deployments(rollout_status="running", in_scope={1}, deployments=[fact(1, "pending")]) is None


# --- duplicated and doubly held ---------------------------------------------------------------------------------


def test_duplicates_count_extra_deployments_of_one_kind_for_one_device_in_one_rollout():
    deployments = [
        fact(1, "succeeded"),
        fact(1, "cancelled"),  # a second update of device 1 in rollout 1
        fact(1, "pending"),  # and a third
        fact(1, "succeeded", kind="rollback"),  # another kind: fine
        fact(1, "succeeded", rollout=2),  # another rollout: not a duplicate (but see doubly held)
        fact(2, "succeeded"),
    ]
    assert duplicated_deployments(deployments) == 2


def test_a_device_with_two_open_deployments_in_one_sample_is_doubly_held():
    sample = [(1, 10), (1, 11), (2, 12), (3, 13), (3, 13)]  # the same row twice is one deployment
    assert doubly_held(sample) == {1}
    assert doubly_held([]) == set()


# --- threshold crossing and last offer --------------------------------------------------------------------------


def test_the_threshold_is_crossed_at_the_report_that_first_reaches_it_on_the_minimum_sample():
    reports = [
        FinishedReport(at(9), failed=False),
        FinishedReport(at(3), failed=True),  # out of order on purpose: judged by finish time
        FinishedReport(at(5), failed=False),
        FinishedReport(at(7), failed=False),
        FinishedReport(at(12), failed=True),
    ]
    # 1 failure of 1 finished at t=3 is 100%, but the sample needs 4 finished: t=9 gives 1/4 = 25% >= 20%.
    assert threshold_crossed_at(reports, total=12, min_sample=4, failure_threshold=0.2) == at(9)
    # At 30% it needs the second failure: 2/5 at t=12.
    assert threshold_crossed_at(reports, total=12, min_sample=4, failure_threshold=0.3) == at(12)
    assert threshold_crossed_at(reports, total=12, min_sample=4, failure_threshold=0.5) is None


def test_a_wave_smaller_than_the_sample_crosses_on_all_of_its_devices():
    reports = [FinishedReport(at(1), failed=True), FinishedReport(at(2), failed=True)]
    assert threshold_crossed_at(reports, total=2, min_sample=10, failure_threshold=0.1) == at(2)


def test_exactly_at_the_threshold_counts_as_crossed():
    reports = [FinishedReport(at(i), failed=i == 0) for i in range(10)]
    assert threshold_crossed_at(reports, total=10, min_sample=10, failure_threshold=0.1) == at(9)


def test_the_last_offer_is_the_latest_offer_of_that_image_only():
    offers = [Offer(at(1), "bad"), Offer(at(14), "bad"), Offer(at(30), "good"), Offer(at(6), "bad")]
    assert last_offer_at(offers, "bad") == at(14)
    assert last_offer_at(offers, "other") is None
    assert seconds_between(at(9), at(14)) == 5.0
    assert seconds_between(at(9), at(4)) == -5.0  # the last offer came before the crossing
    assert seconds_between(None, at(4)) is None


# --- acceptance -------------------------------------------------------------------------------------------------


def clean_report(**changes):
    report = {
        "scenario": "healthy",
        "rollout_ended": True,
        "rollout_status": "completed",
        "lost_deployments": 0,
        "duplicated_deployments": 0,
        "doubly_held_devices": 0,
        "bricked_devices": 0,
        "audit_chain_ok": True,
        "unverified_installs": 0,
        "untrusted_refusals": 0,
        "poll_seconds": 2,
        "bad_release_sha256": None,
        "seconds_threshold_to_last_offer": None,
        "racing": None,
    }
    return {**report, **changes}


def test_a_clean_report_passes_every_check():
    checks = acceptance_checks(clean_report(), expected_status="completed")
    assert failed_checks(checks) == [] and len(checks) == 9


def test_each_target_missed_fails_its_own_check_with_the_figure():
    report = clean_report(lost_deployments=2, doubly_held_devices=3, audit_chain_ok=False, rollout_status="aborted")
    failed = {
        check.name: check.value for check in failed_checks(acceptance_checks(report, expected_status="completed"))
    }
    assert failed == {
        "0 lost deployments": 2,
        "0 doubly-held devices": 3,
        "the audit chain verifies": False,
        "the rollout ended completed": "aborted",
    }


def test_an_install_without_verification_or_an_untrusted_refusal_fails_the_drill():
    # "Every drill scenario passes with full verification on every agent" (issue #11): a unit that wrote an image
    # no verified offer backed, or any offer refused as untrusted, fails the drill; a report without the figures too.
    for changes, name, value in (
        ({"unverified_installs": 1}, "every install was verified against both repositories", 1),
        ({"untrusted_refusals": 2}, "0 offers refused as untrusted", 2),
        ({"unverified_installs": None}, "every install was verified against both repositories", None),
    ):
        failed = failed_checks(acceptance_checks(clean_report(**changes), expected_status="completed"))
        assert [(check.name, check.value) for check in failed] == [(name, value)]


def test_a_rollout_that_never_ended_fails_and_cannot_claim_zero_lost():
    report = clean_report(rollout_ended=False, rollout_status="halted", lost_deployments=None)
    names = {check.name for check in failed_checks(acceptance_checks(report, expected_status=None))}
    assert names == {"the rollout ended", "0 lost deployments"}


def test_the_failing_release_must_stop_being_offered_within_one_poll_interval():
    late = clean_report(bad_release_sha256="abc", seconds_threshold_to_last_offer=41.5, poll_seconds=2)
    in_time = clean_report(bad_release_sha256="abc", seconds_threshold_to_last_offer=1.9, poll_seconds=2)
    before = clean_report(bad_release_sha256="abc", seconds_threshold_to_last_offer=-3.0, poll_seconds=2)
    never_crossed = clean_report(bad_release_sha256="abc", seconds_threshold_to_last_offer=None)
    name = "last offer of the failing release within one poll interval of the threshold"
    for report, ok in ((late, False), (in_time, True), (before, True), (never_crossed, False)):
        check = next(c for c in acceptance_checks(report, expected_status=None) if c.name == name)
        assert check.ok is ok, report


def test_racing_starts_pass_only_when_exactly_one_start_succeeded():
    name = "exactly one of the racing starts succeeded"
    for succeeded, ok in ((1, True), (2, False), (0, False)):
        report = clean_report(racing={"starts_succeeded": succeeded})
        check = next(c for c in acceptance_checks(report, expected_status=None) if c.name == name)
        assert (check.ok, check.value) == (ok, succeeded)
