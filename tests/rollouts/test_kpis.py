"""KPI selectors with exact figures: success rate, mean time to recover, share on the latest release, rollbacks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils.timezone import now as timezone_now

from devices.firmware.models import FirmwareRelease
from devices.models import Device
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus
from rollouts.kpis import (
    DAY,
    WEEK,
    deployment_success_rate,
    incidents_contained,
    kpi_periods,
    kpi_report,
    latest_release_share,
    mean_time_to_recover,
    rollbacks_per_release,
    success_rate_total,
)
from rollouts.models import Deployment, Rollout, Wave
from tests.factories import ChangeRequestFactory, DeviceFactory, FirmwareReleaseFactory, UserFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # Wednesday of ISO week 48
W46 = datetime(2026, 11, 9, tzinfo=UTC)
W47 = datetime(2026, 11, 16, tzinfo=UTC)
W48 = datetime(2026, 11, 23, tzinfo=UTC)
LONG_AGO = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def old_fleet(fleet):
    """The shared fleet, entered into the inventory (and its releases published) long before the window."""
    Device.objects.update(created_at=LONG_AGO)
    FirmwareRelease.objects.update(created_at=LONG_AGO)
    return fleet


def make_rollout(release, rollback_release, **fields) -> Rollout:
    change = ChangeRequestFactory.create(release=release, rollback_release=rollback_release)
    operator = UserFactory.create(roles=["operator"])
    rollout = Rollout.objects.create(
        change=change,
        release=release,
        rollback_release=rollback_release,
        plan={"waves": []},
        plan_hash="0" * 64,
        started_by=operator,
        **fields,
    )
    Wave.objects.create(rollout=rollout, index=0, name="all", planned_devices=0)
    return rollout


def deploy(rollout: Rollout, device: Device, status: str, finished_at: datetime | None, **fields) -> Deployment:
    kind = fields.pop("kind", DeploymentKind.UPDATE)
    release = rollout.release if kind == DeploymentKind.UPDATE else rollout.rollback_release
    return Deployment.objects.create(
        rollout=rollout,
        wave=rollout.waves.get(index=0),
        device=device,
        release=release,
        kind=kind,
        status=status,
        finished_at=finished_at,
        **fields,
    )


def test_periods_are_utc_weeks_and_days_ending_with_the_current_one():
    weeks = kpi_periods(unit=WEEK, count=3, now=NOW)
    assert [(p.label, p.start, p.end) for p in weeks] == [
        ("2026-W46", W46, W47),
        ("2026-W47", W47, W48),
        ("2026-W48", W48, W48 + timedelta(weeks=1)),
    ]
    days = kpi_periods(unit=DAY, count=2, now=NOW)
    assert [p.label for p in days] == ["2026-11-24", "2026-11-25"]
    assert days[-1].start == datetime(2026, 11, 25, tzinfo=UTC)
    with pytest.raises(ValueError):
        kpi_periods(unit="month", count=3, now=NOW)
    with pytest.raises(ValueError):
        kpi_periods(unit=WEEK, count=0, now=NOW)


def test_success_rate_counts_finished_update_deployments_per_period(old_fleet):
    rollout = make_rollout(old_fleet["new"], old_fleet["old"])
    devices = list(Device.objects.filter(hardware_model=old_fleet["model"]).order_by("pk"))
    plan = [
        (DeploymentStatus.SUCCEEDED, W46 + timedelta(days=1)),
        (DeploymentStatus.SUCCEEDED, W46 + timedelta(days=1)),
        (DeploymentStatus.SUCCEEDED, W46 + timedelta(days=2)),
        (DeploymentStatus.FAILED, W46 + timedelta(days=2)),
        (DeploymentStatus.SUCCEEDED, W47),  # the first instant of W47 belongs to W47
        (DeploymentStatus.SUCCEEDED, W47 + timedelta(days=3)),
        (DeploymentStatus.SUCCEEDED, W47 + timedelta(days=3)),
        (DeploymentStatus.SUCCEEDED, W47 + timedelta(days=4)),
        (DeploymentStatus.TIMED_OUT, W47 + timedelta(days=4)),
        (DeploymentStatus.ROLLED_BACK, W47 + timedelta(days=5)),
        (DeploymentStatus.SUCCEEDED, W48 + timedelta(hours=1)),
        (DeploymentStatus.SUCCEEDED, W48 + timedelta(hours=2)),
        (DeploymentStatus.CANCELLED, W48 + timedelta(hours=2)),  # never tried: not counted
        (DeploymentStatus.SKIPPED, W48 + timedelta(hours=2)),
        (DeploymentStatus.SUCCEEDED, W46 - timedelta(seconds=1)),  # before the window
        (DeploymentStatus.PENDING, None),
        (DeploymentStatus.INSTALLING, None),
    ]
    for device, (status, finished_at) in zip(devices, plan, strict=False):
        deploy(rollout, device, status, finished_at)
    deploy(rollout, devices[0], DeploymentStatus.SUCCEEDED, W48 + timedelta(hours=3), kind=DeploymentKind.ROLLBACK)

    rows = deployment_success_rate(kpi_periods(unit=WEEK, count=3, now=NOW))

    assert [(r.period.label, r.succeeded, r.failed, r.timed_out, r.rolled_back) for r in rows] == [
        ("2026-W46", 3, 1, 0, 0),
        ("2026-W47", 4, 0, 1, 1),
        ("2026-W48", 2, 0, 0, 0),
    ]
    assert [r.rate for r in rows] == [0.75, 4 / 6, 1.0]
    total = success_rate_total(rows)
    assert total is not None
    assert (total.attempted, total.succeeded, total.rate) == (12, 9, 0.75)


def test_success_rate_of_an_empty_period_is_unknown_not_zero(old_fleet):
    rows = deployment_success_rate(kpi_periods(unit=DAY, count=2, now=NOW))
    assert [(r.attempted, r.rate) for r in rows] == [(0, None), (0, None)]


def test_mean_time_to_recover_runs_from_halt_to_the_last_device_restored(old_fleet):
    devices = list(Device.objects.filter(hardware_model=old_fleet["model"]).order_by("pk"))
    fast = make_rollout(
        old_fleet["new"], old_fleet["old"], status=RolloutStatus.ROLLED_BACK, halted_at=W47 + timedelta(hours=10)
    )
    for device, minutes in ((devices[0], 30), (devices[1], 60)):
        deploy(fast, device, DeploymentStatus.SUCCEEDED, W47 + timedelta(hours=10, minutes=minutes))
        deploy(
            fast,
            device,
            DeploymentStatus.SUCCEEDED,
            W47 + timedelta(hours=10, minutes=minutes),
            kind=DeploymentKind.ROLLBACK,
        )
    slow = make_rollout(
        FirmwareReleaseFactory.create(version="1.2.0", release_counter=3, hardware_models=[old_fleet["model"]]),
        old_fleet["old"],
        status=RolloutStatus.ROLLED_BACK,
        halted_at=W48 + timedelta(hours=1),
    )
    deploy(slow, devices[2], DeploymentStatus.SUCCEEDED, W48 + timedelta(hours=4), kind=DeploymentKind.ROLLBACK)
    # One device never came back: no recovery time for this rollout.
    stuck = make_rollout(
        FirmwareReleaseFactory.create(version="1.3.0", release_counter=4, hardware_models=[old_fleet["model"]]),
        old_fleet["old"],
        status=RolloutStatus.ROLLED_BACK,
        halted_at=W48 + timedelta(hours=2),
    )
    deploy(stuck, devices[3], DeploymentStatus.SUCCEEDED, W48 + timedelta(hours=3), kind=DeploymentKind.ROLLBACK)
    deploy(stuck, devices[4], DeploymentStatus.TIMED_OUT, W48 + timedelta(hours=5), kind=DeploymentKind.ROLLBACK)
    # An abort without rollback deployments is no recovery.
    make_rollout(
        FirmwareReleaseFactory.create(version="1.4.0", release_counter=5, hardware_models=[old_fleet["model"]]),
        old_fleet["old"],
        status=RolloutStatus.ABORTED,
        halted_at=W48,
    )

    mttr = mean_time_to_recover(kpi_periods(unit=WEEK, count=3, now=NOW))

    assert [(r.period.label, len(r.recoveries), r.mean) for r in mttr.rows] == [
        ("2026-W46", 0, None),
        ("2026-W47", 1, timedelta(hours=1)),
        ("2026-W48", 1, timedelta(hours=3)),
    ]
    assert [(r.rollout_id, r.devices, r.duration) for r in mttr.recoveries] == [
        (fast.pk, 2, timedelta(hours=1)),
        (slow.pk, 1, timedelta(hours=3)),
    ]
    assert mttr.mean == timedelta(hours=2)
    assert mttr.unrecovered == [stuck.pk]


def test_share_on_latest_release_is_rebuilt_for_each_period_end(old_fleet):
    model = old_fleet["model"]
    devices = list(Device.objects.filter(hardware_model=model).order_by("pk"))
    rollout = make_rollout(old_fleet["new"], old_fleet["old"])
    # 1.1.0 (latest for tcu-4g-r2) reaches 5 devices in W47 and 5 more in W48; one of them is rolled back in W48.
    for device in devices[:5]:
        deploy(rollout, device, DeploymentStatus.SUCCEEDED, W47 + timedelta(days=1))
    for device in devices[5:10]:
        deploy(rollout, device, DeploymentStatus.SUCCEEDED, W48 + timedelta(hours=1))
    deploy(rollout, devices[0], DeploymentStatus.SUCCEEDED, W48 + timedelta(hours=2), kind=DeploymentKind.ROLLBACK)
    Device.objects.filter(pk__in=[d.pk for d in devices[1:10]]).update(installed_version="1.1.0")
    # Two devices joined the fleet during W47 already on 1.1.0; one decommissioned device is left out.
    DeviceFactory.create_batch(2, hardware_model=model, installed_version="1.1.0")
    Device.objects.filter(created_at__gt=LONG_AGO).update(created_at=W47 + timedelta(days=2))
    DeviceFactory.create(hardware_model=model, installed_version="1.1.0", status="decommissioned")

    shares = {s.model: s for s in latest_release_share(kpi_periods(unit=WEEK, count=3, now=NOW), now=NOW)}

    four_g = shares["tcu-4g-r2"]
    assert [(p.latest, p.devices, p.on_latest) for p in four_g.points] == [
        ("1.1.0", 20, 0),  # end of W46: nobody yet
        ("1.1.0", 22, 7),  # end of W47: 5 updated + 2 new devices
        ("1.1.0", 22, 11),  # now: 10 updated - 1 rolled back + 2 new
    ]
    assert four_g.current.share == 11 / 22
    assert four_g.points[-1].at == NOW
    five_g = shares["tcu-5g-r1"]
    assert [(p.latest, p.devices, p.on_latest) for p in five_g.points] == [("1.0.0", 80, 80)] * 3


def test_a_release_published_later_changes_what_latest_means(old_fleet):
    model = old_fleet["model"]
    newer = FirmwareReleaseFactory.create(version="1.2.0", release_counter=3, hardware_models=[model])
    FirmwareRelease.objects.filter(pk=newer.pk).update(created_at=W48 + timedelta(hours=1))
    Device.objects.filter(hardware_model=model).update(installed_version="1.1.0")

    share = {s.model: s for s in latest_release_share(kpi_periods(unit=WEEK, count=2, now=NOW), now=NOW)}

    assert [(p.latest, p.on_latest) for p in share["tcu-4g-r2"].points] == [("1.1.0", 20), ("1.2.0", 0)]


def test_rollbacks_are_counted_per_release_and_period(old_fleet):
    devices = list(Device.objects.filter(hardware_model=old_fleet["model"]).order_by("pk"))
    first = make_rollout(
        old_fleet["new"], old_fleet["old"], status=RolloutStatus.ROLLED_BACK, finished_at=W47 + timedelta(days=1)
    )
    deploy(first, devices[0], DeploymentStatus.ROLLED_BACK, W47, failure_class="boot")
    deploy(first, devices[1], DeploymentStatus.SUCCEEDED, W47)
    deploy(first, devices[1], DeploymentStatus.SUCCEEDED, W47 + timedelta(hours=5), kind=DeploymentKind.ROLLBACK)
    second_release = FirmwareReleaseFactory.create(
        version="1.2.0", release_counter=3, hardware_models=[old_fleet["model"]]
    )
    second = make_rollout(
        second_release, old_fleet["old"], status=RolloutStatus.ROLLED_BACK, finished_at=W48 + timedelta(hours=6)
    )
    deploy(second, devices[2], DeploymentStatus.SUCCEEDED, W48, kind=DeploymentKind.ROLLBACK)
    deploy(second, devices[3], DeploymentStatus.SUCCEEDED, W48, kind=DeploymentKind.ROLLBACK)
    third = make_rollout(
        second_release,
        old_fleet["old"],
        status=RolloutStatus.COMPLETED,
        finished_at=W46 + timedelta(days=1),
    )
    deploy(third, devices[4], DeploymentStatus.ROLLED_BACK, W46 + timedelta(hours=3), failure_class="boot")
    # Rolled back before the window: not counted.
    make_rollout(old_fleet["old"], old_fleet["old"], status=RolloutStatus.ROLLED_BACK, finished_at=W46 - timedelta(1))

    rows = rollbacks_per_release(kpi_periods(unit=WEEK, count=3, now=NOW))

    assert [(r.release, r.per_period, r.total, r.devices_restored, r.device_fallbacks) for r in rows] == [
        ("1.1.0", [0, 1, 0], 1, 1, 1),
        ("1.2.0", [0, 0, 1], 1, 2, 1),
    ]


def test_report_uses_default_period_counts(old_fleet):
    report = kpi_report(unit=DAY, now=NOW)
    assert len(report.periods) == 14 and report.periods[-1].label == "2026-11-25"
    assert report.success_total is not None  # the default window has periods, so there is a total
    assert report.success_total.attempted == 0 and report.recovery.mean is None and report.rollbacks == []
    assert {s.model for s in report.shares} == {"tcu-4g-r2", "tcu-5g-r1"}


def test_mttr_counts_an_abort_that_left_devices_on_the_release_as_unrecovered(old_fleet):
    devices = list(Device.objects.filter(hardware_model=old_fleet["model"]).order_by("pk"))
    abandoned = make_rollout(old_fleet["new"], old_fleet["old"], status=RolloutStatus.ABORTED, halted_at=W48)
    deploy(abandoned, devices[0], DeploymentStatus.SUCCEEDED, W48 - timedelta(hours=1))
    # A device that fell back on its own (A/B) was never affected: the rollout recovers with the restored one.
    retried = make_rollout(
        FirmwareReleaseFactory.create(version="1.5.0", release_counter=6, hardware_models=[old_fleet["model"]]),
        old_fleet["old"],
        status=RolloutStatus.ROLLED_BACK,
        halted_at=W48 + timedelta(hours=1),
    )
    deploy(retried, devices[1], DeploymentStatus.SUCCEEDED, W48, kind=DeploymentKind.UPDATE)
    deploy(retried, devices[1], DeploymentStatus.SUCCEEDED, W48 + timedelta(hours=5), kind=DeploymentKind.ROLLBACK)
    deploy(retried, devices[4], DeploymentStatus.ROLLED_BACK, W48, kind=DeploymentKind.UPDATE)
    # A device that took the image but was never offered the rollback keeps the rollout unrecovered.
    forgotten = make_rollout(
        FirmwareReleaseFactory.create(version="1.6.0", release_counter=7, hardware_models=[old_fleet["model"]]),
        old_fleet["old"],
        status=RolloutStatus.ROLLING_BACK,
        halted_at=W48 + timedelta(hours=1),
    )
    deploy(forgotten, devices[2], DeploymentStatus.SUCCEEDED, W48, kind=DeploymentKind.UPDATE)
    deploy(forgotten, devices[3], DeploymentStatus.SUCCEEDED, W48, kind=DeploymentKind.UPDATE)
    deploy(forgotten, devices[2], DeploymentStatus.SUCCEEDED, W48 + timedelta(hours=2), kind=DeploymentKind.ROLLBACK)

    mttr = mean_time_to_recover(kpi_periods(unit=WEEK, count=3, now=NOW))

    assert [(r.rollout_id, r.devices, r.duration) for r in mttr.recoveries] == [(retried.pk, 1, timedelta(hours=4))]
    assert mttr.unrecovered == sorted([abandoned.pk, forgotten.pk])


def test_incidents_contained_are_halts_before_the_release_left_its_pilot_wave(old_fleet):
    devices = list(Device.objects.filter(hardware_model=old_fleet["model"]).order_by("pk"))

    def release(version: str, counter: int) -> FirmwareRelease:
        return FirmwareReleaseFactory.create(
            version=version, release_counter=counter, hardware_models=[old_fleet["model"]]
        )

    contained = make_rollout(old_fleet["new"], old_fleet["old"], status=RolloutStatus.HALTED, halted_at=W47)
    Wave.objects.create(rollout=contained, index=1, name="rest", planned_devices=10)  # never opened
    deploy(contained, devices[0], DeploymentStatus.FAILED, W47)
    escaped = make_rollout(release("2.0.0", 8), old_fleet["old"], status=RolloutStatus.HALTED, halted_at=W48)
    Wave.objects.create(rollout=escaped, index=1, name="rest", planned_devices=10, started_at=W48 - timedelta(hours=1))
    # Offered outside the pilot without the wave's start recorded still escaped the pilot.
    offered = make_rollout(release("2.1.0", 9), old_fleet["old"], status=RolloutStatus.HALTED, halted_at=W48)
    second = Wave.objects.create(rollout=offered, index=1, name="rest", planned_devices=10)
    Deployment.objects.create(
        rollout=offered, wave=second, device=devices[1], release=offered.release, status=DeploymentStatus.OFFERED
    )
    contained_too = make_rollout(release("2.2.0", 10), old_fleet["old"], status=RolloutStatus.ABORTED, halted_at=W48)
    make_rollout(release("2.3.0", 11), old_fleet["old"], status=RolloutStatus.COMPLETED)  # never halted
    make_rollout(release("2.4.0", 12), old_fleet["old"], status=RolloutStatus.HALTED, halted_at=LONG_AGO)  # outside

    incidents = incidents_contained(kpi_periods(unit=WEEK, count=3, now=NOW))

    assert [(r.period.label, r.halts, r.contained) for r in incidents.rows] == [
        ("2026-W46", 0, 0),
        ("2026-W47", 1, 1),
        ("2026-W48", 3, 1),
    ]
    assert incidents.contained == [contained.pk, contained_too.pk]
    assert sorted(incidents.escaped) == sorted([escaped.pk, offered.pk])
    assert incidents.halts == 4 and incidents.share == 0.5 and incidents.share_pct == "50 %"
    assert incidents.rows[0].share is None  # no halt: unknown, not 0 %


def test_kpi_api_returns_the_report_for_any_role_and_refuses_bad_periods(old_fleet, client_for, operator, auditor):
    devices = list(Device.objects.filter(hardware_model=old_fleet["model"]).order_by("pk"))
    halted_at = timezone_now()
    rollout = make_rollout(old_fleet["new"], old_fleet["old"], status=RolloutStatus.ROLLED_BACK, halted_at=halted_at)
    deploy(rollout, devices[0], DeploymentStatus.SUCCEEDED, halted_at - timedelta(minutes=5))
    deploy(
        rollout, devices[0], DeploymentStatus.SUCCEEDED, halted_at + timedelta(minutes=30),
        kind=DeploymentKind.ROLLBACK,
    )  # fmt: skip

    answer = client_for(auditor).get("/api/v1/kpis/", {"unit": "day", "periods": 3})

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert [p["label"] for p in body["periods"]][-1] == timezone_now().strftime("%Y-%m-%d")
    assert body["mean_time_to_recover"]["mean_seconds"] == 1800.0
    assert body["mean_time_to_recover"]["recoveries"][0]["rollout"] == rollout.pk
    assert body["incidents_contained"] | {"rows": None} == {
        "halts": 1, "contained": 1, "share": 1.0, "rows": None, "contained_rollouts": [rollout.pk],
        "escaped_rollouts": [],
    }  # fmt: skip
    assert body["success_rate"]["total"] == {"attempted": 1, "rate": 1.0}
    for bad in ({"unit": "month"}, {"unit": "day", "periods": 91}, {"unit": "week", "periods": 53}, {"periods": "x"}):
        refused = client_for(operator).get("/api/v1/kpis/", bad)
        assert refused.status_code == 400, bad
    assert client_for(None).get("/api/v1/kpis/").status_code in (401, 403)
