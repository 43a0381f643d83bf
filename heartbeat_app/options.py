"""Per-class options of HeartbeatMixin: attributes and ``get_*()`` hooks over the settings.

As with Django's auth mixins, a consumer sets an attribute for a fixed value or
overrides the hook for one computed per connection; left alone, both read the
settings.
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import parse_qs

from django.core import signing
from django.utils.crypto import salted_hmac

from . import conf, protocol

#: Marks a per-class override left to the settings.
FROM_SETTINGS: Any = object()

#: Salt of the anonymous tokens and of the keys derived from Django sessions.
ANONYMOUS_SALT = "heartbeat_app.anonymous"
#: The query parameter in which a client presents its anonymous token.
ANONYMOUS_PARAM = "anon"
_ANONYMOUS_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_TOKEN = 200  # characters; a token this server issues has about 60


def anonymous_token(anonymous_id: str) -> str:
    """The token that proves the key ``anon:<anonymous_id>`` was issued by this server."""
    return signing.Signer(salt=ANONYMOUS_SALT).sign(anonymous_id)


def anonymous_id(token: Any) -> str | None:
    """The id carried by a token from anonymous_token(), or None if it is not one."""
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        return None
    try:
        value = signing.Signer(salt=ANONYMOUS_SALT).unsign(token)
    except signing.BadSignature:
        return None
    return value if _ANONYMOUS_ID.fullmatch(value) else None


def _session_key(scope: dict) -> str | None:
    session = scope.get("session")
    if session is None:
        return None
    try:
        # Resolved by Channels' SessionMiddleware before the consumer runs: no query.
        return session.session_key or None
    except (AttributeError, NotImplementedError):  # a LazyObject nobody resolved
        return None


class HeartbeatOptions:
    """The heartbeat options of a consumer, and how its sessions are named."""

    scope: dict

    #: Seconds of silence before a probe; FROM_SETTINGS reads HEARTBEAT_INTERVAL.
    heartbeat_interval: float | None = FROM_SETTINGS
    #: Seconds after that before a 4408 close; FROM_SETTINGS reads HEARTBEAT_TIMEOUT.
    heartbeat_timeout: float | None = FROM_SETTINGS
    #: Heartbeat frames per second allowed; FROM_SETTINGS reads HEARTBEAT_RATE_LIMIT.
    heartbeat_rate_limit: float | None = FROM_SETTINGS

    #: The token of the anonymous key this connection was issued, set by
    #: get_heartbeat_user_key(); sent to the client in ``identity`` to present again.
    heartbeat_anonymous_token: str | None = None

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

    def _heartbeat_query(self, name: str) -> str | None:
        """A parameter of the connect URL: None when absent, "" when present and empty."""
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"),
                         keep_blank_values=True)
        return query.get(name, [None])[0]

    def get_heartbeat_tab(self) -> str:
        """The tab id from the connect URL (``?tab=``), or a new one."""
        tab = self._heartbeat_query("tab")
        if protocol.valid_tab_id(tab):
            return tab
        return secrets.token_urlsafe(12)

    def get_heartbeat_user_key(self, tab: str) -> str:
        """The member key: the user's primary key, or an anonymous key the server issued.

        Never taken from the URL: an anonymous visitor's key derives from its Django
        session when it has one; else it is the one carried by a token this server
        signed (``?anon=<token>``), else a new one. A client that sends ``anon`` (empty
        until it has a token) is sent the token in ``identity``. The tab id plays no
        part: anyone may send anyone's.
        """
        user = self.scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            return str(user.pk)
        session_key = _session_key(self.scope)
        if session_key:
            digest = salted_hmac(ANONYMOUS_SALT, session_key, algorithm="sha256")
            return f"anon:{digest.hexdigest()[:20]}"
        presented = self._heartbeat_query(ANONYMOUS_PARAM)
        ident = anonymous_id(presented)
        if ident is None:
            ident = secrets.token_urlsafe(12)
        if presented is not None:  # the client keeps tokens: it gets one
            self.heartbeat_anonymous_token = anonymous_token(ident)
        return f"anon:{ident}"
