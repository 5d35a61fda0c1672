"""Data crossing the Temporal boundary: workflow, activity, update and query payloads (stdlib only).

Every payload is a dataclass; durations are integer seconds; times are ISO-8601 UTC strings.
Names here are part of running histories: never rename an activity, update, query or field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

TASK_QUEUE = "ota-rollouts"
WORKFLOW_NAME = "RolloutWorkflow"


def rollout_workflow_id(rollout_id: int) -> str:
    """Deterministic workflow id, so starting twice is a no-op."""
    return f"rollout-{rollout_id}"


class Activity:
    """Stable activity names (workflows/activities.py implements them).

    Argument -> result, as RolloutWorkflow calls them:
      WAVE_WINDOW_WAIT        WaveRef -> WindowWait
      WAVE_ASSIGN             WaveRef -> WaveAssignment (idempotent: bulk insert of the wave's deployments)
      WAVE_HEALTH             WaveRef -> WaveHealth
      ROLLOUT_PHASE           PhaseChange -> None (projection + decision record for system actions)
      ROLLOUT_HALT            HaltRequest -> int (stop offering the release anywhere; idempotent)
      ROLLBACK_ASSIGN         RollbackRef -> int (devices offered the rollback release; idempotent)
      ROLLBACK_HEALTH         RollbackRef -> WaveHealth (of the rollback deployments)
      ROLLOUT_FINISH          FinishRequest -> None (idempotent)
      HUMAN_ACTION_AUTHORIZE  AuthorizeRequest -> None (raises DomainError to refuse; records the decision once
                              per update id: a retry after the commit succeeds and records nothing)
      WAVE_PROMOTE            WaveRef -> bool (an automatic promotion, re-checked in the database; idempotent)

    Every activity checks that it runs for the workflow `rollout_workflow_id(rollout_id)`, and the database
    refuses steps no recorded gate allows: a second or forged workflow cannot move a rollout.
    """

    WAVE_WINDOW_WAIT = "rollouts.wave_window_wait"
    WAVE_ASSIGN = "rollouts.wave_assign"
    WAVE_HEALTH = "rollouts.wave_health"
    ROLLOUT_PHASE = "rollouts.rollout_phase"
    ROLLOUT_HALT = "rollouts.rollout_halt"
    ROLLBACK_ASSIGN = "rollouts.rollback_assign"
    ROLLBACK_HEALTH = "rollouts.rollback_health"
    ROLLOUT_FINISH = "rollouts.rollout_finish"
    HUMAN_ACTION_AUTHORIZE = "rollouts.human_action_authorize"
    WAVE_PROMOTE = "rollouts.wave_promote"


class MaintenanceActivity(StrEnum):
    """Stable names of the activities of the scheduled maintenance workflows (workflows/maintenance.py)."""

    IMAGE_REPOSITORY_REFRESH = "firmware.image_repository_refresh"  # None -> RepositoryRefresh
    EXPIRY_AUDIT = "firmware.expiry_audit"  # None -> ExpiryAuditResult
    AUDIT_RUN = "audits.run"  # AuditRun -> AuditResult


# The Temporal schedule that refreshes the image repository's timestamp and snapshot (created by every worker that
# runs the default registrations; a second creation is a no-op), its workflow's name and how often it fires.
IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID = "image-repository-refresh"
IMAGE_REPOSITORY_REFRESH_WORKFLOW = "ImageRepositoryRefresh"
IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS = 600


# The expiry audit's schedule (keys and metadata close to expiry, next to the refresh): its workflow and period.
EXPIRY_AUDIT_SCHEDULE_ID = "expiry-audit"
EXPIRY_AUDIT_WORKFLOW = "ExpiryAudit"
EXPIRY_AUDIT_EVERY_SECONDS = 3600


@dataclass
class ExpiryAuditResult:
    """How many findings the expiry audit has (open alerts), and how many of them are critical."""

    findings: int
    critical: int


# The recurring audits (rollouts.audits): one Temporal schedule per kind, `audit-<kind with dashes>`, each starting
# RecurringAuditWorkflow with AuditRun(kind) every so many seconds. The kinds equal approvals.audit.choices
# RECURRING_AUDIT_KINDS (a test holds them together; this module may import no Django).
AUDIT_WORKFLOW = "RecurringAudit"
AUDIT_EVERY_SECONDS: dict[str, int] = {
    "stale_devices": 6 * 3600,
    "inventory_drift": 3600,
    "overdue_reviews": 3600,
    "telemetry_gaps": 3600,
    "certificates": 3600,
}


def audit_schedule_id(kind: str) -> str:
    """The schedule of audit `kind`, e.g. audit-stale-devices."""
    return "audit-" + kind.replace("_", "-")


@dataclass
class AuditRun:
    """Which audit to run (one of AUDIT_EVERY_SECONDS)."""

    kind: str


@dataclass
class AuditResult:
    """What one audit run changed, and how many of its findings are open (and critical) now."""

    kind: str
    opened: int
    refreshed: int
    resolved: int
    open: int
    critical: int


@dataclass
class RepositoryRefresh:
    """What one refresh re-signed ("snapshot", "timestamp"; empty when nothing was near expiry)."""

    resigned: list[str]


class Update(StrEnum):
    """A person's actions on a running rollout, sent as Temporal Updates of these names (the human actions)."""

    PROMOTE = "promote"
    ABORT = "abort"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"


class Query(StrEnum):
    STATUS = "status"


class Phase(StrEnum):
    """Rollout phases as the workflow sees them: the one list of rollout status words.

    rollouts.choices.RolloutStatus (the model's choices) has exactly these values; a test and an import-time check
    hold them together. Values live in rows and workflow histories: never rename one.
    """

    SCHEDULED = "scheduled"
    RUNNING = "running"
    AWAITING_PROMOTION = "awaiting_promotion"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


class Gate(StrEnum):
    """Why the workflow is waiting for a person (empty string: it is not)."""

    NONE = ""
    PROMOTION = "promotion"  # the wave passed and is manual
    INCONCLUSIVE = "inconclusive"  # not enough evidence to promote automatically
    HALTED = "halted"  # the wave failed and the abort policy is `halt`


class Verdict(StrEnum):
    """A wave's health verdict (workflows.policy.wave_verdict)."""

    CONTINUE = "continue"
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class SignalVerdict(StrEnum):
    """The health gates' verdict on a wave's post-update signals (rollouts.signal_policy); "" when none gate."""

    NONE = ""
    PASS = "pass"
    REGRESSION = "regression"
    INCONCLUSIVE = "inconclusive"


@dataclass
class WavePlan:
    """One wave as approved with the change (copied into the workflow input at start)."""

    name: str
    soak_seconds: int
    min_sample: int
    success_threshold: float
    failure_threshold: float
    promotion: str  # "auto" | "manual"


@dataclass
class RolloutInput:
    """Workflow input; also the state carried across continue-as-new."""

    rollout_id: int
    change_id: int
    author_id: int
    waves: list[WavePlan]
    abort_policy: str  # "halt" | "halt_and_rollback"
    monitor_interval_seconds: int = 30
    # Carried across continue-as-new:
    start_wave: int = 0
    wave_assigned: bool = False
    wave_soak_started_at: str = ""  # ISO time the current wave's soak began ("" = not yet)
    paused: bool = False
    gate: str = ""  # Gate open when the run continued as new ("" = none)
    rolling_back: bool = False  # the rollback saga had begun (its assignment is idempotent)
    rollback_reason: str = ""  # why the rollback began (for the finish record)
    rollback_actor_id: int | None = None  # who asked for it (None: the abort policy)


@dataclass
class WaveRef:
    rollout_id: int
    wave_index: int


@dataclass
class WaveAssignment:
    wave_index: int
    assigned: int  # deployments of this wave in the database after the call (idempotent)
    opened_at: str = ""  # ISO time the wave opened to devices (its soak starts then); "" in old histories


@dataclass
class WindowWait:
    """How long the wave must wait before it may start (0: now), and why."""

    seconds: int
    reason: str = ""


@dataclass
class WaveHealth:
    """Counts of one wave's (or the rollback's) deployments; computed from the database."""

    total: int = 0
    pending: int = 0
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    rolled_back: int = 0
    cancelled: int = 0
    # The health gates on post-update signals, read in the same activity (absent in histories from before them,
    # which therefore replay unchanged): a SignalVerdict and one sentence naming the deciding comparison.
    signal: str = ""
    signal_reason: str = ""

    @property
    def failures(self) -> int:
        return self.failed + self.timed_out + self.rolled_back

    @property
    def finished(self) -> int:
        return self.succeeded + self.failures

    @property
    def unfinished(self) -> int:
        return self.pending + self.in_progress


@dataclass
class PhaseChange:
    """Projection of the workflow's state into the database (and the decision record for system actions)."""

    rollout_id: int
    phase: str
    wave_index: int
    gate: str = ""
    reason: str = ""
    health: WaveHealth | None = None


@dataclass
class HaltRequest:
    rollout_id: int
    wave_index: int
    reason: str


@dataclass
class RollbackRef:
    rollout_id: int


@dataclass
class FinishRequest:
    rollout_id: int
    outcome: str  # Phase.COMPLETED | Phase.ABORTED | Phase.ROLLED_BACK
    reason: str = ""
    actor_id: int | None = None


@dataclass
class HumanAction:
    """A person's request to the workflow (promote, abort, rollback, pause, resume)."""

    actor_id: int
    actor_roles: list[str] = field(default_factory=list)
    reason: str = ""
    wave_index: int = -1  # promote names the wave it promotes; -1 elsewhere
    token: str = ""  # proof of the authenticated person, minted by the project (POST .../action-token/)


@dataclass
class AuthorizeRequest:
    """Re-check a human action against the database and record it (activity input)."""

    rollout_id: int
    action: str
    actor_id: int
    reason: str
    wave_index: int
    token: str = ""
    # Id of the Temporal Update that carried the action: the decision is recorded once per update, however often
    # the activity is retried ("" in histories recorded before it was sent: recorded without idempotency).
    update_id: str = ""


@dataclass
class RolloutProgress:
    """What the status query and every human-action update return (the workflow's view of its rollout)."""

    rollout_id: int
    phase: str
    wave_index: int
    wave_name: str
    waves_total: int
    paused: bool
    gate: str
    last_health: WaveHealth | None = None
    last_verdict: str = ""
    message: str = ""
