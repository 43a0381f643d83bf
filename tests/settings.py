"""Test settings: the demo's, with an in-memory layer and database."""

from project.settings import *  # noqa: F403

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
HEARTBEAT_INTERVAL = 25.0
HEARTBEAT_TIMEOUT = 10.0
HEARTBEAT_TICK = 1.0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
