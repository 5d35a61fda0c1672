"""The embedded demo: users for every role, a fleet, releases and changes in several states, a valid chain."""

import json

import pytest
from django.core.management import call_command

from approvals.audit.records import chain_verify
from approvals.models import ChangeRequest
from approvals.selectors import plan_wave_preview
from devices.choices import SIMULATED_TAG
from devices.firmware.models import FirmwareRelease
from devices.firmware.repository.models import ImageMetadata
from devices.firmware.repository.selectors import image_repository_initialised
from devices.models import Device
from devices.scope import scope_devices
from ota_project.roles import Role, roles_of
from rollouts.models import Rollout

pytestmark = pytest.mark.django_db


def test_seed_demo_builds_a_usable_demo_once(settings, tmp_path, capsys, django_capture_on_commit_callbacks):
    settings.DATA_DIR = tmp_path
    with django_capture_on_commit_callbacks(execute=True):  # the repository's files are written after commit
        call_command("seed_demo")
    printed = capsys.readouterr().out
    credentials = json.loads((tmp_path / "demo-credentials.txt").read_text())
    assert all(password in printed for password in credentials.values())
    from django.contrib.auth import get_user_model

    users = get_user_model().objects.all()
    held = set().union(*(roles_of(u) for u in users))
    assert held == set(Role.values)
    assert all(u.check_password(credentials[u.username]) for u in users)
    assert Device.objects.count() == 300 and FirmwareRelease.objects.count() == 3
    statuses = set(ChangeRequest.objects.values_list("status", flat=True))
    assert {"draft", "submitted", "in_review", "approved", "rejected", "changes_requested"} <= statuses
    # The rollout history: one rollout completed, one halted in its pilot and rolled back, devices restored.
    completed, rolled_back = Rollout.objects.get(status="completed"), Rollout.objects.get(status="rolled_back")
    assert completed.deployments.filter(status="succeeded").count() == completed.deployments.count() > 0
    assert completed.change.status == "completed" and completed.status_reason == "All 3 waves passed."
    assert rolled_back.waves.get(index=0).status == "failed" and rolled_back.halted_at is not None
    restored = rolled_back.deployments.filter(kind="rollback")
    assert restored.count() > 0 and restored.exclude(status="succeeded").count() == 0
    assert not rolled_back.deployments.filter(wave__index__gt=0).exists()
    # The live change a newcomer starts targets exactly the simulated fleet, and every wave can reach its sample.
    live = ChangeRequest.objects.get(status="approved", target_scope__tags=[SIMULATED_TAG])
    simulated = Device.objects.filter(tags__name=SIMULATED_TAG)
    assert simulated.count() == 25 and scope_devices(live.target_scope).count() == 25
    plan = live.plan
    assert plan is not None
    waves = plan_wave_preview(plan, live.scope)
    assert all(wave.devices >= planned.min_sample for wave, planned in zip(waves, plan.waves, strict=True))
    assert max(w.soak_seconds for w in plan.waves) <= 300
    verdict = chain_verify()
    assert verdict.ok and verdict.length > 20

    # The development ceremony started the image repository once: a root and signed, empty image targets.
    assert image_repository_initialised()
    assert ImageMetadata.objects.filter(role="root").count() == 1
    assert (settings.IMAGE_REPOSITORY_DIR / "metadata" / "1.root.json").exists()

    call_command("seed_demo")
    assert ImageMetadata.objects.filter(role="root").count() == 1
    assert (
        ChangeRequest.objects.count() == 9 and Rollout.objects.count() == 2 and chain_verify().length == verdict.length
    )
    assert json.loads((tmp_path / "demo-credentials.txt").read_text()) == credentials
