"""Shared fixtures: users per role, API clients, a temporary data directory."""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.signals import connection_created
from rest_framework.test import APIClient

from devices.edge.abuse import limits_reset
from devices.edge.quiet import quiet_reset
from ota_project.hsm.softhsm import softhsm_setup
from ota_project.roles import Role
from tests.change_fixtures import SAFE_ANSWERS, approved_change, change_fields, fleet, submitted_change  # noqa: F401
from tests.factories import UserFactory

# One Temporal dev server per test session, shared by every test that needs one.
pytest_plugins = ["tests.temporal_support"]


def _allow_decision_record_reset(sender, connection, **kwargs):
    """Transactional tests end with a flush (TRUNCATE of every table); migration 0005 refuses TRUNCATE on the
    decision record unless the session says the reset is deliberate."""
    with connection.cursor() as cursor:
        cursor.execute("SET ota.allow_decision_record_reset = 'on'")


connection_created.connect(_allow_decision_record_reset)

# A connection per use in tests, unless CONN_MAX_AGE is set: with the settings' persistent default (60 s) the threads
# of in-process Temporal workers and live servers keep their test-database sessions after their test, and the test
# database cannot be dropped at the end of the run. (pytest-django has imported the settings before this module.)
if "CONN_MAX_AGE" not in os.environ:
    django_settings.DATABASES[DEFAULT_DB_ALIAS]["CONN_MAX_AGE"] = 0


@pytest.fixture(scope="session", autouse=True)
def _no_foreign_temporal() -> None:
    """Tests reach only a Temporal server they started themselves (`temporal_settings`, the drill stacks): by
    default the address is a loopback port nobody listens on, never 127.0.0.1:7233, where a developer's `make run`
    may be serving (its worker would receive the tests' change workflows). Nudges then fail fast and are reconciled,
    as when Temporal is down."""
    from ota_project.net import free_port

    django_settings.TEMPORAL_ADDRESS = f"127.0.0.1:{free_port()}"
    os.environ["TEMPORAL_ADDRESS"] = django_settings.TEMPORAL_ADDRESS


@pytest.fixture(scope="session", autouse=True)
def _softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A throwaway SoftHSM2 token for the session, set up like the development one (ota_project.hsm.softhsm); the
    environment carries it to every process the tests start (commands, drill stacks, live servers)."""
    token = softhsm_setup(tmp_path_factory.mktemp("softhsm"), "ota-test")
    environment = {
        "SOFTHSM2_CONF": str(token.conf),
        "OTA_PKCS11_TOKEN": token.token_label,
        "OTA_PKCS11_PIN_FILE": str(token.pin_file),
        "OTA_PKCS11_LABEL_PREFIX": "test",
    }
    os.environ.update(environment)
    os.environ.pop("OTA_PKCS11_PIN", None)
    django_settings.SOFTHSM2_CONF = token.conf
    django_settings.PKCS11_TOKEN = token.token_label
    django_settings.PKCS11_PIN = ""
    django_settings.PKCS11_PIN_FILE = token.pin_file
    django_settings.PKCS11_LABEL_PREFIX = "test"


@pytest.fixture(autouse=True)
def _isolated_storage(settings, tmp_path, tmp_path_factory):
    """Artifacts, evidence, the audit files (checkpoint log, retired public keys, the pre-HSM key's path) and the
    download-token key go to per-test directories, never to .data/; the audit key itself is in the session's token.
    The audit files sit outside tmp_path: every decision record is signed, and tests that check tmp_path for
    leftovers must not see them there."""
    audit_dir = tmp_path_factory.mktemp("audit")
    (audit_dir / "key").mkdir()
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.EVIDENCE_ROOT = tmp_path / "evidence"
    settings.IMAGE_REPOSITORY_DIR = tmp_path / "repository" / "image"
    settings.AUDIT_SIGNING_KEY_PATH = audit_dir / "key" / "audit_signing_key.pem"
    settings.AUDIT_CHECKPOINT_LOG_PATH = audit_dir / "audit_checkpoints.jsonl"
    settings.AUDIT_RETIRED_KEYS_DIR = audit_dir / "audit_retired_keys"
    settings.OTA_DOWNLOAD_TOKEN_KEY_FILE = audit_dir / "download_token_key"
    settings.OTA_ALERT_WEBHOOK_SECRET_FILE = audit_dir / "alert_webhook_secret"
    # The device PKI (CA files, nginx's certificate) and the proxy secret per test too. The device-protocol tests
    # that speak to the app directly use the development mode's secret credential; the mutual-TLS tests
    # (tests/security/edge/test_device_tls.py) switch to certificate mode, the production default.
    settings.DEVICE_PKI_DIR = audit_dir / "pki"
    settings.DEVICE_PROXY_SECRET_FILE = audit_dir / "device_proxy_secret"
    settings.OTA_DEVICE_AUTH = "secret"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    # Fast hashing for test users; production keeps Django's default PBKDF2.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # The device API's abuse limits (devices.edge.abuse) are per process and would carry one test's requests into the
    # next: every test starts with empty buckets and the limits off; tests/security/test_device_limits.py turns them on.
    limits_reset()
    # The quiet check-ins' memory (devices.edge.quiet) is per process too: primary keys and epochs repeat.
    quiet_reset()
    settings.OTA_DEVICE_RATE_PER_SECOND = 0
    settings.OTA_ADDRESS_RATE_PER_SECOND = 0
    settings.OTA_UNAUTHENTICATED_RATE_PER_SECOND = 0


@pytest.fixture(autouse=True)
def _migration_data_for_transactional_tests(request):
    """Transactional tests flush the database after each test, taking the rows that data migrations made
    (role groups, default risk questionnaire and approval policy) with them; put them back before each one."""
    marker = request.node.get_closest_marker("django_db")
    if not (marker and marker.kwargs.get("transaction")):
        return
    request.getfixturevalue("transactional_db")
    from django.apps import apps
    from django.contrib.auth.models import Group

    from approvals.models import ApprovalPolicy

    groups = importlib.import_module("approvals.migrations.0003_role_groups")
    defaults = importlib.import_module("approvals.migrations.0004_default_risk_and_policy")
    timers = importlib.import_module("approvals.migrations.0009_change_timers")
    if not Group.objects.exists():
        groups.create_groups(apps, None)
    if not ApprovalPolicy.objects.exists():
        defaults.load_defaults(apps, None)
        timers.load_timer_defaults(apps, None)
    if not Group.objects.filter(name="cab_chair").exists():
        timers.load_timer_defaults(apps, None)


def _uses_database(request: pytest.FixtureRequest) -> bool:
    names = set(request.fixturenames)
    return bool(names & {"db", "transactional_db"}) or request.node.get_closest_marker("django_db") is not None


@pytest.fixture(autouse=True)
def _security_events_cleared(request, django_db_blocker):
    """Security events are committed outside the test's transaction on purpose (they outlive rollbacks), so the
    test's rollback does not take them away: delete them after each test that used the database."""
    yield
    if not _uses_database(request):
        return
    with django_db_blocker.unblock():
        side = connections.create_connection(DEFAULT_DB_ALIAS)
        try:
            with side.cursor() as cursor:
                cursor.execute("DELETE FROM approvals_securityevent")
        finally:
            side.close()


@pytest.fixture
def make_user(db) -> Callable[..., User]:
    """make_user("cab_member", "security_officer", username="alice") -> a user with those roles."""

    def _make(*roles: str, **kwargs: object) -> User:
        return UserFactory.create(roles=list(roles), **kwargs)

    return _make


@pytest.fixture
def requester(make_user) -> User:
    return make_user(Role.REQUESTER, username="rita-requester")


@pytest.fixture
def cab_member(make_user) -> User:
    return make_user(Role.CAB_MEMBER, username="carl-cab")


@pytest.fixture
def cab_member_2(make_user) -> User:
    return make_user(Role.CAB_MEMBER, username="cora-cab")


@pytest.fixture
def security_officer(make_user) -> User:
    return make_user(Role.SECURITY_OFFICER, username="sam-security")


@pytest.fixture
def operator(make_user) -> User:
    return make_user(Role.OPERATOR, username="olga-operator")


@pytest.fixture
def auditor(make_user) -> User:
    return make_user(Role.AUDITOR, username="anna-auditor")


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def client_for() -> Callable[[User | None], APIClient]:
    """client_for(user) -> an API client authenticated as that user (None: anonymous)."""

    def _client(user: User | None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.force_authenticate(user=user)
        return client

    return _client


@pytest.fixture
def embedded_data_dir():
    """A DATA_DIR for the embedded PostgreSQL, outside tmp_path: pytest keeps /tmp/pytest-of-<user> private (0700)
    and any pytest run starting meanwhile closes it again, but as root the server runs as another user, which must
    reach its data directory. Any server left running there is stopped afterwards."""
    from ota_project import embedded_db

    path = Path(tempfile.mkdtemp(prefix="ota-embedded-db-"))
    yield path
    embedded_db.stop(path)
    shutil.rmtree(path, ignore_errors=True)
