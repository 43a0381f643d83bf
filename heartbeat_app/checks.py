"""System checks for heartbeat_app settings; ids are stable and listed in docs/settings.md."""

from __future__ import annotations

import importlib.util
import numbers
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from . import conf

# Below this a heartbeat costs real CPU per connection for no gain in production.
MIN_SENSIBLE_INTERVAL = 1.0


def _is_seconds(value: Any, *, allow_none: bool) -> bool:
    if value is None:
        return allow_none
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return value > 0 and value == value and value != float("inf")


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs) -> list:
    """Validate the HEARTBEAT_* settings."""
    errors: list = []
    interval = conf.get("HEARTBEAT_INTERVAL")
    timeout = conf.get("HEARTBEAT_TIMEOUT")
    tick = conf.get("HEARTBEAT_TICK")
    spread = conf.get("HEARTBEAT_PHASE_SPREAD")
    proxy = conf.get("HEARTBEAT_PROXY_IDLE_TIMEOUT")
    rate = conf.get("HEARTBEAT_RATE_LIMIT")
    burst = conf.get("HEARTBEAT_RATE_BURST")
    retry = conf.get("HEARTBEAT_RETRY_AFTER_MS")

    if not _is_seconds(interval, allow_none=True):
        errors.append(Error(
            f"HEARTBEAT_INTERVAL must be a positive number of seconds or None, not {interval!r}.",
            hint="Use the default 25.0, or None to turn server probes off.",
            id="heartbeat_app.E001",
        ))
        interval = None
    if not _is_seconds(timeout, allow_none=True):
        errors.append(Error(
            f"HEARTBEAT_TIMEOUT must be a positive number of seconds or None, not {timeout!r}.",
            hint="Use the default 10.0, or None to never close silent connections.",
            id="heartbeat_app.E002",
        ))
        timeout = None
    if not _is_seconds(tick, allow_none=False) or tick > 1.0:
        errors.append(Error(
            f"HEARTBEAT_TICK must be a number of seconds above 0 and at most 1, not {tick!r}.",
            hint="The tick bounds how late a probe or a zombie close can be; use 1.0.",
            id="heartbeat_app.E003",
        ))
        tick = None
    if not _is_seconds(spread, allow_none=True):
        errors.append(Error(
            f"HEARTBEAT_PHASE_SPREAD must be a positive number of seconds or None, not {spread!r}.",
            hint="Leave it unset to spread probes over a quarter of HEARTBEAT_TIMEOUT.",
            id="heartbeat_app.E004",
        ))
    if not _is_seconds(proxy, allow_none=True):
        errors.append(Error(
            f"HEARTBEAT_PROXY_IDLE_TIMEOUT must be a positive number of seconds or None, "
            f"not {proxy!r}.",
            hint="Set it to the idle timeout of your proxy or load balancer "
                 "(nginx proxy_read_timeout, 60 s by default).",
            id="heartbeat_app.E005",
        ))
        proxy = None
    if not _is_seconds(rate, allow_none=True) or (
        isinstance(burst, bool) or not isinstance(burst, int) or burst < 1
    ):
        errors.append(Error(
            "HEARTBEAT_RATE_LIMIT must be a positive number or None, and "
            f"HEARTBEAT_RATE_BURST a positive integer (got {rate!r} and {burst!r}).",
            hint="The defaults are 20.0 frames per second with a burst of 60.",
            id="heartbeat_app.E006",
        ))
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        errors.append(Error(
            f"HEARTBEAT_RETRY_AFTER_MS must be a non-negative integer, not {retry!r}.",
            hint="It is the hint, in milliseconds, sent with a 4429 close.",
            id="heartbeat_app.E007",
        ))

    gc_threshold = conf.get("HEARTBEAT_GC_THRESHOLD")
    if gc_threshold is not None and not (
        isinstance(gc_threshold, (tuple, list)) and 1 <= len(gc_threshold) <= 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in gc_threshold)
    ):
        errors.append(Error(
            f"HEARTBEAT_GC_THRESHOLD must be None or a tuple of up to three non-negative "
            f"integers, not {gc_threshold!r}.",
            hint="For example (20000, 10, 10); see docs/deployment.md.",
            id="heartbeat_app.E008",
        ))
    errors += _check_restarts()
    if interval is not None and conf.get("HEARTBEAT_TIMEOUT") is None:
        errors.append(Warning(
            "HEARTBEAT_TIMEOUT is None: silent connections are probed but never closed, "
            "so zombies stay until the transport notices (about 52 s under Daphne).",
            hint="Set HEARTBEAT_TIMEOUT to a few seconds (10.0 by default).",
            id="heartbeat_app.W001",
        ))
    if tick is not None and timeout is not None and timeout < 4 * tick:
        errors.append(Warning(
            f"HEARTBEAT_TIMEOUT ({timeout} s) is shorter than four scheduler ticks "
            f"({tick} s each): zombies may be closed later than interval + timeout + 1 tick.",
            hint="Raise HEARTBEAT_TIMEOUT or lower HEARTBEAT_TICK.",
            id="heartbeat_app.W002",
        ))
    if interval is not None and interval < MIN_SENSIBLE_INTERVAL:
        errors.append(Warning(
            f"HEARTBEAT_INTERVAL is {interval} s: every connection will be probed more "
            "than once a second, which costs CPU for no gain in production.",
            hint="Use 10 to 30 seconds outside of tests.",
            id="heartbeat_app.W003",
        ))
    if proxy is not None and (interval is None or interval > 0.75 * proxy):
        shown = "off" if interval is None else f"{interval} s"
        errors.append(Warning(
            f"HEARTBEAT_INTERVAL ({shown}) is above 75 % of the proxy idle timeout "
            f"({proxy} s): the proxy may cut idle connections before a heartbeat crosses it.",
            hint=f"Set HEARTBEAT_INTERVAL to at most {0.75 * proxy:g} s, or raise the "
                 "proxy's idle timeout.",
            id="heartbeat_app.W004",
        ))
    return errors


def _is_count(value: Any, *, allow_none: bool, minimum: int = 1) -> bool:
    if value is None:
        return allow_none
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_restarts() -> list:
    """The admission gate's and the drain's settings."""
    errors = []
    cap = conf.get("HEARTBEAT_MAX_HANDSHAKES")
    rate = conf.get("HEARTBEAT_CONNECT_RATE")
    if not _is_count(cap, allow_none=True) or not _is_seconds(rate, allow_none=True):
        errors.append(Error(
            "HEARTBEAT_MAX_HANDSHAKES must be a positive integer or None, and "
            f"HEARTBEAT_CONNECT_RATE a positive number or None (got {cap!r} and {rate!r}).",
            hint="The defaults are 128 handshakes in flight and no rate limit.",
            id="heartbeat_app.E012",
        ))
    retry = conf.get("HEARTBEAT_RETRY_MIN_MS")
    spread = conf.get("HEARTBEAT_DRAIN_SPREAD")
    timeout = conf.get("HEARTBEAT_DRAIN_TIMEOUT")
    on_sigterm = conf.get("HEARTBEAT_DRAIN_ON_SIGTERM")
    if not (_is_count(retry, allow_none=False, minimum=0)
            and (spread == 0 or _is_seconds(spread, allow_none=True))
            and _is_seconds(timeout, allow_none=False) and isinstance(on_sigterm, bool)):
        errors.append(Error(
            "HEARTBEAT_RETRY_MIN_MS must be a non-negative integer, HEARTBEAT_DRAIN_SPREAD "
            "non-negative seconds or None, HEARTBEAT_DRAIN_TIMEOUT positive seconds and "
            f"HEARTBEAT_DRAIN_ON_SIGTERM a boolean (got {retry!r}, {spread!r}, {timeout!r}, "
            f"{on_sigterm!r}).",
            hint="The defaults are 500, 5.0, 20.0 and True; see docs/deployment.md.",
            id="heartbeat_app.E013",
        ))
    return errors


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


@register(Tags.compatibility)
def check_metrics(app_configs=None, **kwargs) -> list:
    """Check that metrics can be exported, and the settings of the metrics view."""
    problems = []
    if importlib.util.find_spec("prometheus_client") is None:
        problems.append(Warning(
            "Metrics are off: prometheus_client is not installed, so the metrics view "
            "answers 503 and nothing is exported.",
            hint="pip install django-heartbeat-app[metrics]; or add heartbeat_app.W020 to "
                 "SILENCED_SYSTEM_CHECKS if you do not want metrics.",
            id="heartbeat_app.W020",
        ))
    import ipaddress
    import os

    allowed = getattr(settings, "HEARTBEAT_METRICS_ALLOWED_IPS", [])
    staff = getattr(settings, "HEARTBEAT_METRICS_ALLOW_STAFF", False)
    bad = []
    if isinstance(allowed, str | bytes) or not isinstance(allowed, list | tuple | set):
        bad = [allowed]
    else:
        for entry in allowed:
            try:
                ipaddress.ip_network(str(entry).strip(), strict=False)
            except ValueError:
                bad.append(entry)
    if bad or not isinstance(staff, bool):
        problems.append(Error(
            "HEARTBEAT_METRICS_ALLOWED_IPS must be a list of IP addresses or networks and "
            f"HEARTBEAT_METRICS_ALLOW_STAFF a boolean (refused: {bad!r} and {staff!r}).",
            hint='For example ["127.0.0.1", "::1", "10.0.0.0/8"] and False.',
            id="heartbeat_app.E020",
        ))
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir")
    if path and not (os.path.isdir(path) and os.access(path, os.W_OK)):
        problems.append(Warning(
            f"PROMETHEUS_MULTIPROC_DIR is {path!r}, which is not a writable directory: "
            "the workers cannot write their metrics.",
            hint="Create an empty directory for it before the server starts, and empty it "
                 "at each start (see docs/metrics.md).",
            id="heartbeat_app.W021",
        ))
    return problems
