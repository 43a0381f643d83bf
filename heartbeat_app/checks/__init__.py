"""System checks of every heartbeat_app setting; ids are stable and listed in docs/settings.md.

One module per concept, each registering its checks when imported (``apps.py`` imports
this package): ``heartbeat`` (the heartbeat core, admission and drain), ``sessions``
(session rows), ``presence`` (the presence store), ``channel_layer`` (Channels and the
default layer) and ``metrics`` (the exporter and the metrics view).
"""

import importlib.util  # noqa: F401  (tests patch importlib.util.find_spec through here)

from .channel_layer import CHANNELS_REDIS_BLOCK_SECONDS, check_channels
from .heartbeat import MAX_TIMER_SECONDS, MIN_SENSIBLE_INTERVAL, check_settings
from .metrics import check_metrics
from .presence import check_presence
from .sessions import check_sessions

__all__ = [
    "CHANNELS_REDIS_BLOCK_SECONDS", "MAX_TIMER_SECONDS", "MIN_SENSIBLE_INTERVAL",
    "check_channels", "check_metrics", "check_presence", "check_sessions", "check_settings",
]
