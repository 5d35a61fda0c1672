"""Fixtures of the audit room's page tests (shared with the other page tests): a role-less user, rolled-out changes."""

from tests.web.audit_fixtures import no_temporal, nobody, rolled_back, rolled_out  # noqa: F401 (fixtures)
