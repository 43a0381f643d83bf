"""Test settings: the demo's, with an in-memory layer and database."""

import os  # noqa: E402
import tempfile  # noqa: E402

import dj_database_url  # noqa: E402

from project.settings import *  # noqa: F403

# DATABASE_URL runs the database tests against that server (CI: PostgreSQL too).
DATABASES = {"default": (
    dj_database_url.parse(os.environ["DATABASE_URL"]) if os.environ.get("DATABASE_URL")
    # A file, not ":memory:": Django never closes an in-memory SQLite connection, and
    # the one left in the async executor's thread would outlive database tests.
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": "heartbeat-tests.sqlite3",
          "TEST": {"NAME": os.path.join(tempfile.gettempdir(),
                                        f"heartbeat-tests-{os.getpid()}.sqlite3")}}
)}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
HEARTBEAT_INTERVAL = 25.0
HEARTBEAT_TIMEOUT = 10.0
HEARTBEAT_TICK = 1.0
# Tests that need session rows turn this on; the others run without a database.
HEARTBEAT_RECORD_SESSIONS = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
HEARTBEAT_DRAIN_ON_SIGTERM = False  # the suite tests drain() itself; servers drain on SIGTERM
