"""Alerts: deduplicated raising (also under concurrent transactions), e-mail and the signed, retried webhook."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from ota_project.alerts import services
from ota_project.alerts.choices import AlertStatus, DeliveryStatus
from ota_project.alerts.models import Alert, AlertDelivery
from ota_project.alerts.tasks import webhook_deliver_task, webhook_sweep_task
from ota_project.alerts.webhook import SIGNATURE_HEADER, webhook_secret, webhook_signature_valid
from ota_project.errors import InvalidInput
from ota_project.roles import Role
from tests.factories import UserFactory
from tests.support.alerts import raised_concurrently


def _raise(**overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "kind": "fleet.rollback_rate",
        "dedup_key": "fleet.rollback_rate:release:7",
        "title": "Fleet-wide rollback rate 30% on release 1.1.0",
        "summary": "Rollbacks across every rollout of 1.1.0 are over the limit.",
        "link": "/rollouts/12/",
        "evidence": {"finished": 40, "rolled_back": 12},
    }
    fields.update(overrides)
    return services.raise_alert(**fields)


@pytest.mark.django_db
def test_raising_the_same_condition_again_bumps_one_alert_and_mails_once(django_capture_on_commit_callbacks):
    operator = UserFactory.create(username="otto-op", roles=[Role.OPERATOR])
    UserFactory.create(username="cab-carla", roles=[Role.CAB_MEMBER])
    with django_capture_on_commit_callbacks(execute=True):
        first = _raise()
    with django_capture_on_commit_callbacks(execute=True):
        again = _raise(evidence={"finished": 50, "rolled_back": 20})
    assert again.pk == first.pk
    assert Alert.objects.count() == 1
    again.refresh_from_db()
    assert again.occurrences == 2 and again.evidence == {"finished": 50, "rolled_back": 20}
    assert again.notifications == 1
    assert [message.to for message in mail.outbox] == [[operator.email]]  # operators only, once
    assert "/rollouts/12/" in mail.outbox[0].body and "rolled_back: 12" in mail.outbox[0].body


@pytest.mark.django_db
def test_an_open_alert_is_notified_again_only_after_the_renotify_interval(settings, django_capture_on_commit_callbacks):
    settings.OTA_ALERT_RENOTIFY_SECONDS = 600
    UserFactory.create(roles=[Role.OPERATOR])
    with django_capture_on_commit_callbacks(execute=True):
        alert = _raise()
    Alert.objects.filter(pk=alert.pk).update(notified_at=timezone.now() - timedelta(seconds=599))
    with django_capture_on_commit_callbacks(execute=True):
        _raise()
    assert len(mail.outbox) == 1
    Alert.objects.filter(pk=alert.pk).update(notified_at=timezone.now() - timedelta(seconds=601))
    with django_capture_on_commit_callbacks(execute=True):
        bumped = _raise()
    assert len(mail.outbox) == 2 and bumped.notifications == 2 and bumped.occurrences == 3


@pytest.mark.django_db
def test_a_security_kind_also_mails_security_officers(django_capture_on_commit_callbacks):
    operator = UserFactory.create(roles=[Role.OPERATOR])
    officer = UserFactory.create(roles=[Role.SECURITY_OFFICER])
    with django_capture_on_commit_callbacks(execute=True):
        _raise(kind="security.attestation_failed", dedup_key="security.attestation_failed:TCU1")
    assert sorted(m.to[0] for m in mail.outbox) == sorted([operator.email, officer.email])


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "Fleet Rollback!"),
        ("dedup_key", ""),
        ("title", " "),
        ("title", "Subject\nBcc: everyone@example.test"),
        ("summary", ""),
        ("link", "https://evil.example/"),
        ("link", "//evil.example/"),
        ("link", "javascript:alert(1)"),
        ("evidence", ["not", "an", "object"]),
        ("evidence", {"blob": "x" * 20_000}),
        ("severity", "apocalyptic"),
    ],
)
def test_bad_alert_input_is_refused_by_field_and_writes_nothing(field, value):
    with pytest.raises(InvalidInput) as refused:
        _raise(**{field: value})
    assert field in refused.value.fields
    assert not Alert.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_raises_of_one_condition_make_one_alert_and_one_notification(settings):
    UserFactory.create(roles=[Role.OPERATOR])
    settings.OTA_ALERT_WEBHOOK_URL = "http://127.0.0.1:9/unused"  # outbox rows only: the sweep is not run here
    settings.CELERY_TASK_ALWAYS_EAGER = False
    alert = raised_concurrently(_raise, times=8, timeout=30)
    assert AlertDelivery.objects.filter(alert=alert).count() == 1


@pytest.mark.django_db
def test_a_resolved_alert_frees_its_key_for_a_new_one(operator):
    first = _raise()
    Alert.objects.filter(pk=first.pk).update(
        status=AlertStatus.RESOLVED, resolved_at=timezone.now(), resolved_by=operator
    )
    second = _raise()
    assert second.pk != first.pk and second.status == AlertStatus.OPEN


# --- The webhook --------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_webhook_is_signed_and_retried_with_backoff_until_delivered(receiver, django_capture_on_commit_callbacks):
    receiver.answers = [503, 500]
    with django_capture_on_commit_callbacks(execute=True):
        alert = _raise()  # the first attempt runs at commit (eager Celery) and gets 503
    delivery = AlertDelivery.objects.get(alert=alert)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.PENDING, 1, 503)
    first_wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 5 < first_wait <= 10
    assert webhook_sweep_task() == 0  # not due yet: nothing is sent early
    AlertDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert webhook_sweep_task() == 1  # 500
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and 15 < (delivery.next_attempt_at - timezone.now()).total_seconds() <= 20
    AlertDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    webhook_deliver_task.apply(args=(delivery.pk,))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 3)
    assert len(receiver.received) == 3
    secret = webhook_secret()
    bodies = {body for _, body in receiver.received}
    assert len(bodies) == 1  # every retry sends the same bytes
    for headers, body in receiver.received:
        assert webhook_signature_valid(secret, headers[SIGNATURE_HEADER], body)
        assert not webhook_signature_valid(b"another secret", headers[SIGNATURE_HEADER], body)
        assert not webhook_signature_valid(secret, headers[SIGNATURE_HEADER], body + b" ")
    payload = json.loads(bodies.pop())
    assert payload["id"] == alert.pk and payload["link"] == "/rollouts/12/" and payload["evidence"]["rolled_back"] == 12


@pytest.mark.django_db
def test_a_webhook_that_is_down_never_undoes_the_alert_and_gives_up_after_its_attempts(
    settings, django_capture_on_commit_callbacks
):
    settings.OTA_ALERT_WEBHOOK_URL = "http://127.0.0.1:9/nothing-listens-here"
    settings.OTA_ALERT_WEBHOOK_MAX_ATTEMPTS = 2
    UserFactory.create(roles=[Role.OPERATOR])
    with django_capture_on_commit_callbacks(execute=True):
        alert = _raise()
    assert Alert.objects.filter(pk=alert.pk, status=AlertStatus.OPEN).exists() and len(mail.outbox) == 1
    delivery = AlertDelivery.objects.get(alert=alert)
    assert delivery.attempts == 1 and delivery.last_error
    AlertDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    webhook_sweep_task()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 2)


@pytest.mark.django_db
def test_a_failed_attempt_outside_eager_mode_is_retried_by_celery_with_the_backoff(receiver, monkeypatch):
    receiver.answers = [502]
    alert = _raise()
    delivery = AlertDelivery.objects.get(alert=alert)
    countdowns: list[int] = []

    class Retried(Exception):
        pass

    def fake_retry(*, countdown: int) -> Exception:
        countdowns.append(countdown)
        return Retried()

    monkeypatch.setattr(webhook_deliver_task, "retry", fake_retry)
    webhook_deliver_task.push_request(**{"is_eager": False, "retries": 0})
    try:
        with pytest.raises(Retried):
            webhook_deliver_task.run(delivery.pk)
    finally:
        webhook_deliver_task.pop_request()
    assert countdowns == [10]
