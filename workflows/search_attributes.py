"""Search attributes that let operators find rollouts in the Temporal UI and CLI (Django-free: workflows import it).

Set at start by `workflows.client.start_rollout_workflow` (change id, release version, phase, wave, paused) and
upserted by `RolloutWorkflow` on every phase change, e.g.
`temporal workflow list --query 'OtaPhase="awaiting_promotion" AND OtaChangeId=42'`.
Names and types are part of the cluster's configuration and of running histories: never rename or retype a key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)
from temporalio.service import RPCError, RPCStatusCode

logger = logging.getLogger(__name__)

OTA_CHANGE_ID: SearchAttributeKey[int] = SearchAttributeKey.for_int("OtaChangeId")
OTA_RELEASE_VERSION: SearchAttributeKey[str] = SearchAttributeKey.for_keyword("OtaReleaseVersion")
OTA_PHASE: SearchAttributeKey[str] = SearchAttributeKey.for_keyword("OtaPhase")
OTA_WAVE: SearchAttributeKey[int] = SearchAttributeKey.for_int("OtaWave")
OTA_PAUSED: SearchAttributeKey[bool] = SearchAttributeKey.for_bool("OtaPaused")

# ChangeWorkflow (workflows/change.py): the change's status, risk, type and due dates, e.g.
# `temporal workflow list --query 'OtaChangeStatus="in_review" AND OtaReviewDueAt < "2026-12-07T00:00:00Z"'`.
OTA_CHANGE_STATUS: SearchAttributeKey[str] = SearchAttributeKey.for_keyword("OtaChangeStatus")
OTA_RISK_LEVEL: SearchAttributeKey[str] = SearchAttributeKey.for_keyword("OtaRiskLevel")
OTA_CHANGE_TYPE: SearchAttributeKey[str] = SearchAttributeKey.for_keyword("OtaChangeType")
OTA_REVIEW_DUE_AT: SearchAttributeKey[datetime] = SearchAttributeKey.for_datetime("OtaReviewDueAt")
OTA_APPROVAL_EXPIRES_AT: SearchAttributeKey[datetime] = SearchAttributeKey.for_datetime("OtaApprovalExpiresAt")
OTA_SCHEDULED_START: SearchAttributeKey[datetime] = SearchAttributeKey.for_datetime("OtaScheduledStart")

ALL_KEYS: tuple[SearchAttributeKey[Any], ...] = (
    OTA_CHANGE_ID,
    OTA_RELEASE_VERSION,
    OTA_PHASE,
    OTA_WAVE,
    OTA_PAUSED,
    OTA_CHANGE_STATUS,
    OTA_RISK_LEVEL,
    OTA_CHANGE_TYPE,
    OTA_REVIEW_DUE_AT,
    OTA_APPROVAL_EXPIRES_AT,
    OTA_SCHEDULED_START,
)
KEYS_BY_NAME: dict[str, SearchAttributeKey[Any]] = {key.name: key for key in ALL_KEYS}


class SearchAttributesMissing(RuntimeError):
    """The namespace lacks a search attribute (or has it with another type) and this client may not add it."""


def rollout_search_attributes(
    *, change_id: int, release_version: str, phase: str, wave: int = 0, paused: bool = False
) -> TypedSearchAttributes:
    """The attributes a rollout workflow starts with (all five keys, so every rollout is findable by each)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(OTA_CHANGE_ID, change_id),
            SearchAttributePair(OTA_RELEASE_VERSION, release_version),
            SearchAttributePair(OTA_PHASE, phase),
            SearchAttributePair(OTA_WAVE, wave),
            SearchAttributePair(OTA_PAUSED, paused),
        ]
    )


def progress_updates(*, phase: str, wave: int, paused: bool) -> list[SearchAttributeUpdate[Any]]:
    """What `RolloutWorkflow` upserts when its phase, wave or pause flag changes (deterministic, no I/O)."""
    return [OTA_PHASE.value_set(phase), OTA_WAVE.value_set(wave), OTA_PAUSED.value_set(paused)]


def _when(value: str) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def change_search_attribute_updates(
    *,
    change_id: int,
    status: str,
    risk_level: str,
    change_type: str,
    review_due_at: str,
    approval_expires_at: str,
    scheduled_start: str,
) -> list[SearchAttributeUpdate[Any]]:
    """What `ChangeWorkflow` upserts whenever the change's state changes (deterministic, no I/O; "" unsets a date)."""
    updates: list[SearchAttributeUpdate[Any]] = [
        OTA_CHANGE_ID.value_set(change_id),
        OTA_CHANGE_STATUS.value_set(status),
        OTA_RISK_LEVEL.value_set(risk_level),
        OTA_CHANGE_TYPE.value_set(change_type),
    ]
    for key, value in (
        (OTA_REVIEW_DUE_AT, review_due_at),
        (OTA_APPROVAL_EXPIRES_AT, approval_expires_at),
        (OTA_SCHEDULED_START, scheduled_start),
    ):
        when = _when(value)
        updates.append(key.value_set(when) if when is not None else key.value_unset())
    return updates


def to_typed_search_attributes(
    values: Mapping[SearchAttributeKey[Any] | str, object] | TypedSearchAttributes,
) -> TypedSearchAttributes:
    """Accept {OTA_PHASE: "running"} or {"OtaPhase": "running"}; refuse unknown names and wrongly typed values."""
    if isinstance(values, TypedSearchAttributes):
        return values
    pairs: list[SearchAttributePair[Any]] = []
    for raw_key, value in values.items():
        key = KEYS_BY_NAME.get(raw_key) if isinstance(raw_key, str) else raw_key
        if key is None or KEYS_BY_NAME.get(key.name) != key:
            raise ValueError(f"unknown rollout search attribute {raw_key!r} (known: {', '.join(KEYS_BY_NAME)})")
        # bool is an int subclass: an Int key must not silently accept True, nor a Bool key 1.
        if not isinstance(value, key.origin_value_type) or (key.origin_value_type is int and isinstance(value, bool)):
            raise ValueError(f"search attribute {key.name} needs {key.origin_value_type.__name__}, got {value!r}")
        pairs.append(SearchAttributePair(key, value))
    return TypedSearchAttributes(pairs)


async def registered_search_attributes(client: Client, namespace: str | None = None) -> dict[str, int]:
    """Custom search attributes of the namespace: name -> IndexedValueType number."""
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace or client.namespace)
    )
    return dict(response.custom_attributes)


async def ensure_search_attributes(client: Client, namespace: str | None = None) -> list[str]:
    """Register every rollout search attribute in the namespace; idempotent. Returns the names it added.

    Raises SearchAttributesMissing when a key exists with another type, or is absent and the server refuses to add
    it (a cluster where this identity lacks operator rights): register them out of band then. Where listing is
    forbidden too (PERMISSION_DENIED), it assumes they were registered out of band and only logs a warning.
    """
    namespace = namespace or client.namespace
    wanted = {key.name: _indexed_value_type(key) for key in ALL_KEYS}
    try:
        existing = await registered_search_attributes(client, namespace)
    except RPCError as err:
        if err.status not in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
            raise
        # Clusters that hide the operator service from workers: the attributes must have been registered out of band.
        logger.warning(
            "cannot list search attributes in namespace %s (%s); assuming they exist", namespace, err.message
        )
        return []
    wrong_type = [name for name, kind in wanted.items() if name in existing and existing[name] != kind]
    if wrong_type:
        raise SearchAttributesMissing(
            f"namespace {namespace!r} has search attributes {', '.join(wrong_type)} with another type than "
            f"{', '.join(f'{n}={KEYS_BY_NAME[n].indexed_value_type.name}' for n in wrong_type)}"
        )
    missing = {name: kind for name, kind in wanted.items() if name not in existing}
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as err:
        # Another worker registering at the same moment is fine; anything else needs an operator.
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise SearchAttributesMissing(
                f"cannot register search attributes {', '.join(sorted(missing))} in namespace {namespace!r}: "
                f"{err.message} (register them with `temporal operator search-attribute create`)"
            ) from err
    logger.info("registered search attributes %s in namespace %s", ", ".join(sorted(missing)), namespace)
    return sorted(missing)


def _indexed_value_type(key: SearchAttributeKey[Any]) -> IndexedValueType.ValueType:
    # The SDK's enum mirrors the API's IndexedValueType numbers.
    return IndexedValueType.ValueType(int(key.indexed_value_type))
