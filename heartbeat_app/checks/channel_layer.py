"""Checks that Channels is installed and the default channel layer can carry the app."""

from __future__ import annotations

import importlib.util

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.compatibility)
def check_channels(app_configs=None, **kwargs) -> list:
    """Check that Channels and a channel layer are available."""
    if importlib.util.find_spec("channels") is None:
        return [Error(
            "heartbeat_app needs Django Channels, which is not installed.",
            hint="pip install channels daphne",
            id="heartbeat_app.E010",
        )]
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    if "default" not in layers:
        return [Warning(
            "No default channel layer is configured: presence broadcasts and the admin's "
            "disconnect and probe actions need one.",
            hint="Set CHANNEL_LAYERS: channels_redis for several processes, "
                 "channels.layers.InMemoryChannelLayer for a single one.",
            id="heartbeat_app.W010",
        )]
    try:
        from channels.layers import get_channel_layer

        get_channel_layer()
    except Exception as exc:  # any construction failure is a setup mistake
        return [Error(
            f"The default channel layer cannot be built: {exc}",
            hint="Check CHANNEL_LAYERS['default']['BACKEND'] and its CONFIG.",
            id="heartbeat_app.E011",
        )]
    return _check_redis_layer_hosts(layers["default"])


# channels_redis blocks in BZPOPMIN for this long; its socket reads must outlast it.
CHANNELS_REDIS_BLOCK_SECONDS = 5


def _check_redis_layer_hosts(layer: dict) -> list:
    if not str(layer.get("BACKEND", "")).startswith("channels_redis."):
        return []
    try:
        import redis
    except ImportError:
        return []
    if int(redis.__version__.split(".")[0]) < 8:
        return []  # before redis-py 8 socket reads had no timeout by default
    problems = []
    for host in (layer.get("CONFIG") or {}).get("hosts") or ["redis://localhost:6379"]:
        options = host if isinstance(host, dict) else {}
        timeout = options.get("socket_timeout", 5.0)
        if timeout is not None and timeout <= CHANNELS_REDIS_BLOCK_SECONDS:
            problems.append(Warning(
                "The channels_redis layer reads from Redis with a socket timeout of "
                f"{timeout} s, no longer than its {CHANNELS_REDIS_BLOCK_SECONDS} s blocking "
                "receive: with redis-py 8 every idle consumer crashes after 5 s "
                "(channels_redis#422).",
                hint='Give each host dict a "socket_timeout" of 15 (seconds), e.g. '
                     '{"address": "redis://...", "socket_timeout": 15}.',
                id="heartbeat_app.W011",
            ))
        if options.get("max_connections") is None:
            problems.append(Warning(
                "The channels_redis layer uses redis-py's default pool of 100 connections, "
                "which raises instead of waiting: a burst of connects fails handshakes "
                "with HTTP 500.",
                hint='Give each host dict a "max_connections" of 1000 or more.',
                id="heartbeat_app.W012",
            ))
    return problems


