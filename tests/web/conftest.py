"""Fixtures shared by the page tests: a user without a role, a rolled-out change, a rolled-back one, no Temporal."""

from tests.web.audit_fixtures import no_temporal, nobody, rolled_back, rolled_out  # noqa: F401 (fixtures)
