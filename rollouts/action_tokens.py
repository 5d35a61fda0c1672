"""Proof that a person asked for a rollout action: short-lived tokens minted after sign-in, spent once.

A human action reaches the rollout workflow as a Temporal Update, by the API, the web UI or the `temporal` CLI.
Anyone who can reach Temporal could send one naming any operator's id, so the update carries a token the project
minted for an authenticated person: HMAC-SHA256 (key derived from SECRET_KEY, which Temporal never sees) over
(person, rollout, action, wave, expiry, nonce). The authorize activity verifies it against the database and
spends its nonce (a unique row), so a token moves a rollout at most once, and only in the way it names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction

from ota_project.errors import NotPermitted
from rollouts.models import ActionTokenUse
from workflows.types import Update

TOKEN_TTL = timedelta(minutes=5)
_CONTEXT = b"ota-rollout-action-token-v1"


@dataclass(frozen=True)
class ActionClaim:
    """What a token says: this person may take this action on this rollout (and wave) until `expires_at`."""

    actor_id: int
    rollout_id: int
    action: str
    wave_index: int
    expires_at: datetime
    nonce: str


def _key() -> bytes:
    return hmac.new(settings.SECRET_KEY.encode(), _CONTEXT, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def action_token_mint(*, actor_id: int, rollout_id: int, action: str, wave_index: int, now: datetime) -> str:
    """A token for one action by one authenticated person (callers have checked who they are and their role)."""
    claim = {
        "u": actor_id,
        "r": rollout_id,
        "a": action,
        "w": wave_index,
        "e": int((now + TOKEN_TTL).timestamp()),
        "n": secrets.token_hex(16),
    }
    body = _b64(json.dumps(claim, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_b64(hmac.new(_key(), body.encode(), hashlib.sha256).digest())}"


def action_token_read(token: str) -> ActionClaim:
    """The claim of a token the project minted; NotPermitted for anything else (never says which part failed)."""
    refused = NotPermitted("The action carries no valid proof of an authenticated person.", code="forged_action")
    body, _, signature = (token or "").partition(".")
    if not body or not signature or len(token) > 1024:
        raise refused
    expected = _b64(hmac.new(_key(), body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        raise refused
    try:
        raw = json.loads(_unb64(body))
        return ActionClaim(
            actor_id=int(raw["u"]),
            rollout_id=int(raw["r"]),
            action=str(raw["a"]),
            wave_index=int(raw["w"]),
            expires_at=datetime.fromtimestamp(int(raw["e"]), tz=UTC),
            nonce=str(raw["n"]),
        )
    except (ValueError, KeyError, TypeError):
        raise refused from None


def action_token_check(
    *, token: str, actor_id: int, rollout_id: int, action: str, wave_index: int, now: datetime
) -> ActionClaim:
    """Verify that the token proves exactly this action by this person now, without spending it."""
    claim = action_token_read(token)
    if (claim.actor_id, claim.rollout_id, claim.action) != (actor_id, rollout_id, action):
        raise NotPermitted("The action's proof was minted for another person, rollout or action.", code="forged_action")
    if action == Update.PROMOTE and claim.wave_index != wave_index:
        raise NotPermitted("The promotion's proof names another wave.", code="forged_action")
    if claim.expires_at <= now:
        raise NotPermitted("The action's proof has expired; ask for a new one.", code="expired_action_token")
    return claim


def action_token_spent(claim: ActionClaim) -> bool:
    """True when the token of this claim was already spent (by the action it proved)."""
    return ActionTokenUse.objects.filter(nonce=claim.nonce, rollout_id=claim.rollout_id, action=claim.action).exists()


def action_token_spend(
    *, token: str, actor_id: int, rollout_id: int, action: str, wave_index: int, now: datetime
) -> ActionClaim:
    """Verify that the token proves exactly this action by this person now, and spend it (once).

    Runs inside the caller's transaction: if the action is then refused, the token is not spent.
    """
    claim = action_token_check(
        token=token, actor_id=actor_id, rollout_id=rollout_id, action=action, wave_index=wave_index, now=now
    )
    try:
        with transaction.atomic():
            ActionTokenUse.objects.create(
                nonce=claim.nonce, rollout_id=rollout_id, action=action, actor_id=actor_id, expires_at=claim.expires_at
            )
    except IntegrityError:
        raise NotPermitted(
            "This proof was already used; every action needs a new one.", code="replayed_action"
        ) from None
    return claim
