"""E-mail to the people a change's timers concern: the one mail path of `ota_project.mail`, and the timers' actor."""

from __future__ import annotations

from ota_project.mail import notify_people, users_with_roles

__all__ = ["TIMER_ACTOR", "notify_people", "users_with_roles"]

# The system actor of the change's timers in decision records (`system:change-timer for <person or policy>`).
TIMER_ACTOR = "change-timer"
