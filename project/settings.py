"""Settings of the demo project, read from the environment.

REDIS_URL unset: in-memory channel layer (the embedded default, one process).
REDIS_URL set: channels_redis, shared by every process.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_seconds(name: str, default: float | None) -> float | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"none", "off"}:
        return None
    return float(value)


def _env_count(name: str, default: int | None) -> int | None:
    value = _env_seconds(name, default)
    return None if value is None else int(value)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.lower() in {"1", "true", "yes", "on"}


# DEBUG is on unless DJANGO_DEBUG says otherwise, so `make run` works as it is; with DEBUG
# off the demo needs a key of its own: the one below is public, and whoever knows a site's
# key can sign its anonymous tokens and cookies.
DEBUG = _env_bool("DJANGO_DEBUG", True)
_DEMO_SECRET_KEY = "demo-only-insecure-key-change-me"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _DEMO_SECRET_KEY
if not DEBUG and SECRET_KEY == _DEMO_SECRET_KEY:
    raise ImproperlyConfigured(
        "The demo runs with DEBUG off (DJANGO_DEBUG=0) but without a SECRET_KEY of its own, "
        "and its built-in key is public. Set DJANGO_SECRET_KEY to a long random string, e.g. "
        "the output of: python -c \"import secrets; print(secrets.token_urlsafe(50))\" "
        "(or leave DJANGO_DEBUG unset for a local demo)."
    )
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if h.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "heartbeat_app",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=0,
    )
}

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py's asyncio pool raises once 100 connections are in use;
                # a bigger pool keeps connection storms from failing handshakes.
                # redis-py 8 reads with a 5 s socket timeout by default, which aborts
                # the layer's 5 s blocking BZPOPMIN (channels_redis#422): allow more.
                "hosts": [{"address": REDIS_URL, "max_connections": 1000, "socket_timeout": 15}],
                # Channels of a dead worker otherwise linger in groups for a day.
                "group_expiry": 3600,
            },
        }
    }
else:
    # Channels' in-memory layer with one copy per group send (heartbeat_app/memorylayer.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "heartbeat_app.memorylayer.InMemoryChannelLayer"}}

HEARTBEAT_INTERVAL = _env_seconds("HEARTBEAT_INTERVAL", 25.0)
HEARTBEAT_TIMEOUT = _env_seconds("HEARTBEAT_TIMEOUT", 10.0)
HEARTBEAT_TICK = _env_seconds("HEARTBEAT_TICK", 1.0)
HEARTBEAT_RATE_LIMIT = _env_seconds("HEARTBEAT_RATE_LIMIT", 20.0)
HEARTBEAT_MESSAGE_RATE = _env_seconds("HEARTBEAT_MESSAGE_RATE", 50.0)
HEARTBEAT_SESSION_LOG = os.environ.get("HEARTBEAT_SESSION_LOG", "kv") or None
HEARTBEAT_CHECKPOINT_INTERVAL = _env_seconds("HEARTBEAT_CHECKPOINT_INTERVAL", 30.0)
HEARTBEAT_PACE_DAPHNE = _env_bool("HEARTBEAT_PACE_DAPHNE", True)
PRESENCE_TTL = _env_seconds("PRESENCE_TTL", 30.0)
PRESENCE_INSTANCE_TTL = _env_seconds("PRESENCE_INSTANCE_TTL", 15.0)
PRESENCE_REAP_INTERVAL = _env_seconds("PRESENCE_REAP_INTERVAL", 5.0)
PRESENCE_LEAVE_GRACE = _env_seconds("PRESENCE_LEAVE_GRACE", 5.0)
PRESENCE_BROADCAST_INTERVAL = _env_seconds("PRESENCE_BROADCAST_INTERVAL", None)
PRESENCE_KEY_PREFIX = os.environ.get("PRESENCE_KEY_PREFIX", "heartbeat")
PRESENCE_FULL_LIST_MAX = _env_count("PRESENCE_FULL_LIST_MAX", 200)
PRESENCE_COUNT_INTERVAL = _env_seconds("PRESENCE_COUNT_INTERVAL", 2.0)
PRESENCE_SIGNAL_FANOUT = _env_count("PRESENCE_SIGNAL_FANOUT", 5000)
# Restarts and deploys: the handshake gate and the drain on SIGTERM.
HEARTBEAT_MAX_HANDSHAKES = _env_count("HEARTBEAT_MAX_HANDSHAKES", 128)
HEARTBEAT_CONNECT_RATE = _env_seconds("HEARTBEAT_CONNECT_RATE", None)
HEARTBEAT_HOLD_UNTIL_JOINED = _env_bool("HEARTBEAT_HOLD_UNTIL_JOINED", False)
HEARTBEAT_RETRY_MIN_MS = _env_count("HEARTBEAT_RETRY_MIN_MS", 500)
HEARTBEAT_DRAIN_SPREAD = _env_seconds("HEARTBEAT_DRAIN_SPREAD", 2.0)
HEARTBEAT_DRAIN_RATE = _env_seconds("HEARTBEAT_DRAIN_RATE", 300.0)
HEARTBEAT_DRAIN_TIMEOUT = _env_seconds("HEARTBEAT_DRAIN_TIMEOUT", 20.0)
HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT = _env_seconds("HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT", 5.0)

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "heartbeat_app": {
            "handlers": ["console"],
            "level": os.environ.get("HEARTBEAT_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}

# /metrics: Prometheus on this host may scrape; nobody else (docs/metrics.md).
HEARTBEAT_METRICS_ALLOWED_IPS = ["127.0.0.1", "::1"]
