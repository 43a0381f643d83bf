"""The benchmark servers' settings with counting off (``HEARTBEAT_METRICS = False``).

``python -m bench.pingpong --metrics-paired`` runs one server on these and one on
``settings``, otherwise the same, to measure what counting costs a ping.
"""

from .settings import *  # noqa: F403

HEARTBEAT_METRICS = False
