"""Per-class options of HeartbeatMixin: attributes and ``get_*()`` hooks over the settings.

As with Django's auth mixins, a consumer sets an attribute for a fixed value or
overrides the hook for one computed per connection; left alone, both read the
settings.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs

from . import conf, protocol

#: Marks a per-class override left to the settings.
FROM_SETTINGS: Any = object()


class HeartbeatOptions:
    """The heartbeat options of a consumer, and how its sessions are named."""

    scope: dict

    #: Seconds of silence before a probe; FROM_SETTINGS reads HEARTBEAT_INTERVAL.
    heartbeat_interval: float | None = FROM_SETTINGS
    #: Seconds after that before a 4408 close; FROM_SETTINGS reads HEARTBEAT_TIMEOUT.
    heartbeat_timeout: float | None = FROM_SETTINGS
    #: Heartbeat frames per second allowed; FROM_SETTINGS reads HEARTBEAT_RATE_LIMIT.
    heartbeat_rate_limit: float | None = FROM_SETTINGS

    def get_heartbeat_interval(self) -> float | None:
        """Seconds of silence before this connection is probed, or None."""
        if self.heartbeat_interval is FROM_SETTINGS:
            return conf.interval()
        return self.heartbeat_interval

    def get_heartbeat_timeout(self) -> float | None:
        """Seconds after the interval before a silent connection is closed, or None."""
        if self.heartbeat_timeout is FROM_SETTINGS:
            return conf.timeout()
        return self.heartbeat_timeout

    def get_heartbeat_rate_limit(self) -> float | None:
        """Heartbeat frames per second this connection may send, or None."""
        if self.heartbeat_rate_limit is FROM_SETTINGS:
            value = conf.get("HEARTBEAT_RATE_LIMIT")
            return None if value is None else float(value)
        return self.heartbeat_rate_limit

    def get_heartbeat_tab(self) -> str:
        """The tab id from the connect URL (``?tab=``), or a new one."""
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        tab = query.get("tab", [None])[0]
        if protocol.valid_tab_id(tab):
            return tab
        return secrets.token_urlsafe(12)

    def get_heartbeat_user_key(self, tab: str) -> str:
        """The member key: the user's primary key, or ``anon:<tab>``."""
        user = self.scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            return str(user.pk)
        return f"anon:{tab}"
