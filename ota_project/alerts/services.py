"""Raising alerts (deduplicated, notified after commit) and the guarded status move of an alert.

`raise_alert` is the one way any app reports a condition that needs a person. One live alert per `dedup_key`
(a partial unique index): raising the same condition again, even from concurrent transactions, bumps that alert's
occurrences and evidence. A notification round (e-mail to the roles concerned, one webhook delivery) goes out when
the alert is first raised, and again for an alert still open (nobody acknowledged it) once
OTA_ALERT_RENOTIFY_SECONDS have passed since the last round; never more often, whatever the concurrency.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from ota_project.alerts.choices import (
    ALERT_LIVE,
    ALERT_TRANSITIONS,
    SEVERITY_ORDER,
    AlertSeverity,
    AlertStatus,
    DeliveryStatus,
    alert_roles,
)
from ota_project.alerts.models import Alert, AlertDelivery
from ota_project.alerts.webhook import webhook_post
from ota_project.errors import Conflict, InvalidInput
from ota_project.mail import notify_people, users_with_roles

logger = logging.getLogger(__name__)

KIND_RE = re.compile(r"\A[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\Z")
LINK_RE = re.compile(r"\A/(?!/)[^\s\\<>\"']*\Z")
MAX_EVIDENCE_BYTES = 16 * 1024
MAX_SUMMARY_CHARS = 4000


def _input_errors(
    *, kind: str, dedup_key: str, title: str, summary: str, link: str, evidence: Any, severity: str
) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not isinstance(kind, str) or len(kind) > 64 or not KIND_RE.match(kind):
        errors["kind"] = ["A dotted lowercase name of at most 64 characters, e.g. fleet.rollback_rate."]
    if not isinstance(dedup_key, str) or not 1 <= len(dedup_key) <= 200 or not dedup_key.isprintable():
        errors["dedup_key"] = ["1 to 200 printable characters."]
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= 200 or not title.isprintable():
        errors["title"] = ["1 to 200 printable characters on one line (it is the mail's subject)."]
    if not isinstance(summary, str) or not 1 <= len(summary.strip()) <= MAX_SUMMARY_CHARS:
        errors["summary"] = [f"1 to {MAX_SUMMARY_CHARS} characters."]
    if not isinstance(link, str) or len(link) > 500 or not LINK_RE.match(link):
        errors["link"] = ["A path on this site starting with a single /, e.g. /rollouts/12/."]
    if not isinstance(evidence, dict):
        errors["evidence"] = ["An object."]
    else:
        try:
            size = len(json.dumps(evidence, cls=DjangoJSONEncoder))
        except (TypeError, ValueError):
            errors["evidence"] = ["Must be JSON."]
        else:
            if size > MAX_EVIDENCE_BYTES:
                errors["evidence"] = [f"At most {MAX_EVIDENCE_BYTES} bytes of JSON."]
    if severity not in AlertSeverity.values:
        errors["severity"] = [f"One of: {', '.join(AlertSeverity.values)}."]
    return errors


def _json_safe(evidence: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(evidence, cls=DjangoJSONEncoder))
    return loaded


def _live_locked(dedup_key: str) -> Alert | None:
    return Alert.objects.select_for_update().filter(dedup_key=dedup_key, status__in=ALERT_LIVE).first()


def _more_severe(a: str, b: str) -> str:
    return a if SEVERITY_ORDER.get(a, 9) <= SEVERITY_ORDER.get(b, 9) else b


@transaction.atomic
def raise_alert(
    *,
    kind: str,
    dedup_key: str,
    title: str,
    summary: str,
    link: str,
    evidence: dict[str, Any],
    severity: str = AlertSeverity.WARNING,
) -> Alert:
    """Raise (or bump) the live alert for `dedup_key`; notify after commit when a round is due.

    Runs inside the caller's transaction when there is one: the alert and its webhook outbox row commit or roll back
    with the decision that raised it, and nothing is sent for a decision that did not happen. Refuses bad input
    with InvalidInput naming each field.
    """
    errors = _input_errors(
        kind=kind, dedup_key=dedup_key, title=title, summary=summary, link=link, evidence=evidence, severity=severity
    )
    if errors:
        raise InvalidInput("The alert is invalid.", fields=errors)
    evidence = _json_safe(evidence)
    now = timezone.now()
    for _attempt in range(3):
        alert = _live_locked(dedup_key)
        if alert is None:
            try:
                # A savepoint: a concurrent raise that inserted first makes this insert wait for it, then fail
                # on the partial unique index; the loop then finds and bumps that row.
                with transaction.atomic():
                    alert = Alert.objects.create(
                        kind=kind,
                        dedup_key=dedup_key,
                        severity=severity,
                        title=title.strip(),
                        summary=summary.strip(),
                        link=link,
                        evidence=evidence,
                        first_seen_at=now,
                        last_seen_at=now,
                        notified_at=now,
                    )
            except IntegrityError:
                continue
            _notify(alert)
            return alert
        return _bump(alert, title=title, summary=summary, link=link, evidence=evidence, severity=severity, now=now)
    raise Conflict("The alert changed too often while it was raised; try again.", code="stale")


def _bump(
    alert: Alert, *, title: str, summary: str, link: str, evidence: dict[str, Any], severity: str, now: datetime
) -> Alert:
    """Count one more occurrence on the live alert (row locked by the caller); a new round when one is due."""
    renotify_after = timedelta(seconds=settings.OTA_ALERT_RENOTIFY_SECONDS)
    due = alert.status == AlertStatus.OPEN and now - alert.notified_at >= renotify_after
    updates: dict[str, Any] = {
        "occurrences": F("occurrences") + 1,
        "last_seen_at": now,
        "title": title.strip(),
        "summary": summary.strip(),
        "link": link,
        "evidence": evidence,
        "severity": _more_severe(alert.severity, severity),
    }
    if due:
        updates.update(notified_at=now, notifications=F("notifications") + 1)
    Alert.objects.filter(pk=alert.pk).update(**updates)
    alert.refresh_from_db()
    if due:
        _notify(alert)
    return alert


def alert_absolute_link(alert: Alert) -> str:
    """The alert's link with OTA_PUBLIC_URL in front (the bare path when it is unset)."""
    return settings.OTA_PUBLIC_URL.rstrip("/") + alert.link


def alert_page_link(alert: Alert) -> str:
    """The alert's own page (evidence and acknowledgement), absolute when OTA_PUBLIC_URL is set."""
    return f"{settings.OTA_PUBLIC_URL.rstrip('/')}/alerts/{alert.pk}/"


def alert_payload(alert: Alert) -> dict[str, Any]:
    """What the webhook receives about an alert (and what the API shows)."""
    return {
        "id": alert.pk,
        "kind": alert.kind,
        "dedup_key": alert.dedup_key,
        "severity": alert.severity,
        "status": alert.status,
        "title": alert.title,
        "summary": alert.summary,
        "link": alert_absolute_link(alert),
        "alert_page": alert_page_link(alert),
        "evidence": alert.evidence,
        "occurrences": alert.occurrences,
        "first_seen_at": alert.first_seen_at.isoformat(),
        "last_seen_at": alert.last_seen_at.isoformat(),
        "notification": alert.notifications,
    }


def _mail_body(alert: Alert) -> str:
    evidence = "\n".join(f"  {key}: {value}" for key, value in sorted(alert.evidence.items()))
    return (
        f"{alert.summary}\n\nSee: {alert_absolute_link(alert)}\nAlert and evidence: {alert_page_link(alert)}\n\n"
        f"Evidence:\n{evidence or '  (none)'}\n\nSeen {alert.occurrences} time(s), first at "
        f"{alert.first_seen_at:%Y-%m-%d %H:%M} UTC. Acknowledge it on the alert page so others know you are on it."
    )


def _notify(alert: Alert) -> None:
    """One notification round, after commit: e-mail to the roles concerned and a webhook delivery (outbox row)."""
    notify_people(
        users_with_roles(*alert_roles(alert.kind)),
        subject=f"[{alert.get_severity_display()}] {alert.title}",
        body=_mail_body(alert),
    )
    url = settings.OTA_ALERT_WEBHOOK_URL
    if not url:
        return
    delivery = AlertDelivery.objects.create(
        alert=alert,
        notification=alert.notifications,
        url=url,
        body=json.dumps(alert_payload(alert), sort_keys=True, separators=(",", ":")),
        next_attempt_at=timezone.now(),
        created_at=timezone.now(),
    )
    transaction.on_commit(lambda: _enqueue_delivery(delivery.pk))


def _enqueue_delivery(delivery_id: int) -> None:
    from ota_project.alerts.tasks import webhook_deliver_task

    try:
        webhook_deliver_task.delay(delivery_id)
    except Exception:  # noqa: BLE001 - a broker down must not undo the alert; the periodic sweep delivers it
        logger.exception("could not enqueue webhook delivery %s; the sweep will send it", delivery_id)


# ---------------------------------------------------------------------------------------------------------------
# Webhook attempts
# ---------------------------------------------------------------------------------------------------------------


def webhook_backoff_seconds(attempts: int) -> int:
    """Wait after the `attempts`-th failed attempt: doubling from OTA_ALERT_WEBHOOK_BACKOFF_SECONDS, capped at 1 h."""
    base = max(1, settings.OTA_ALERT_WEBHOOK_BACKOFF_SECONDS)
    return int(min(base * 2 ** max(0, attempts - 1), 3600))


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt did: delivered, given up, not attempted (not due or taken), or retry in `retry_in` s."""

    attempted: bool
    delivered: bool = False
    retry_in: int | None = None


def webhook_attempt(*, delivery_id: int, now: datetime | None = None) -> AttemptOutcome:
    """Send one pending delivery once if it is due. The claim (a conditional UPDATE pushing `next_attempt_at` out by
    a lease) makes concurrent workers and the sweep skip it, and no database lock is held across the network."""
    now = now or timezone.now()
    timeout = settings.OTA_ALERT_WEBHOOK_TIMEOUT_SECONDS
    claimed = AlertDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + timedelta(seconds=timeout + 30))
    if not claimed:
        # Not due yet (an early redelivery, or another worker holds the lease): say when to look again.
        due = (
            AlertDelivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING)
            .values_list("next_attempt_at", flat=True)
            .first()
        )
        return AttemptOutcome(
            attempted=False, retry_in=None if due is None else max(1, math.ceil((due - now).total_seconds()))
        )
    delivery = AlertDelivery.objects.get(pk=delivery_id)
    result = webhook_post(
        url=delivery.url,
        body=delivery.body.encode(),
        delivery_id=delivery.pk,
        timestamp=int(time.time()),
        timeout=timeout,
    )
    attempts = delivery.attempts + 1
    done = timezone.now()
    if result.delivered:
        AlertDelivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.DELIVERED,
            attempts=attempts,
            delivered_at=done,
            last_status_code=result.status_code,
            last_error="",
        )
        return AttemptOutcome(attempted=True, delivered=True)
    if attempts >= settings.OTA_ALERT_WEBHOOK_MAX_ATTEMPTS:
        AlertDelivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.FAILED,
            attempts=attempts,
            last_status_code=result.status_code,
            last_error=result.error,
        )
        logger.error("webhook delivery %s of alert %s gave up: %s", delivery.pk, delivery.alert_id, result.error)
        return AttemptOutcome(attempted=True)
    wait = webhook_backoff_seconds(attempts)
    AlertDelivery.objects.filter(pk=delivery.pk).update(
        attempts=attempts,
        next_attempt_at=done + timedelta(seconds=wait),
        last_status_code=result.status_code,
        last_error=result.error,
    )
    logger.warning("webhook delivery %s failed (%s); retry in %s s", delivery.pk, result.error, wait)
    return AttemptOutcome(attempted=True, retry_in=wait)


def webhook_deliveries_due(*, now: datetime | None = None, limit: int = 100) -> list[int]:
    """Pending deliveries whose next attempt is due (lost tasks, long backoffs, the embedded eager mode)."""
    now = now or timezone.now()
    return list(
        AlertDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


# ---------------------------------------------------------------------------------------------------------------
# The guarded status move (the decision record is written by the caller above the core, in the same transaction)
# ---------------------------------------------------------------------------------------------------------------


def alert_transition(*, alert_id: int, to: str, by: User, note: str, now: datetime) -> tuple[Alert, str] | None:
    """Move an alert along ALERT_TRANSITIONS with a conditional UPDATE; returns (alert, previous status) when it
    moved, None when it already was in `to` (a repeated click). Must run in the caller's transaction."""
    alert = Alert.objects.select_for_update().filter(pk=alert_id).first()
    if alert is None:
        raise InvalidInput("No such alert.", fields={"alert": ["Unknown."]}, code="not_found")
    if alert.status == to:
        return None
    if to not in ALERT_TRANSITIONS[alert.status]:
        raise Conflict(f"An alert that is {alert.status} cannot become {to}.", code="invalid_transition")
    updates: dict[str, Any] = {"status": to}
    if to == AlertStatus.ACKNOWLEDGED:
        updates.update(acknowledged_at=now, acknowledged_by=by, acknowledge_note=note)
    elif to == AlertStatus.RESOLVED:
        updates.update(resolved_at=now, resolved_by=by, resolve_note=note)
    previous = alert.status
    if Alert.objects.filter(pk=alert.pk, status=previous).update(**updates) != 1:
        raise Conflict("The alert changed at the same time; reload and try again.", code="stale")
    alert.refresh_from_db()
    return alert, previous
