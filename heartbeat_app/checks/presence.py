"""Checks of the PRESENCE_* settings: the store, its times and limits, and how they relate."""

from __future__ import annotations

import importlib.util
import math
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .. import conf
from .values import is_count, is_seconds

REDIS_SCHEMES = ("redis", "rediss", "unix")

# name: (shape, check id, what the setting must be, hint)
_SECONDS = {
    "PRESENCE_TTL": (
        dict(allow_none=False), "E043", "a positive number of seconds",
        "Use the default 30.0: each session's presence is refreshed every third of it."),
    "PRESENCE_INSTANCE_TTL": (
        dict(allow_none=False), "E044", "a positive number of seconds",
        "Use the default 15.0: a process silent this long is taken for lost."),
    "PRESENCE_REAP_INTERVAL": (
        dict(allow_none=False), "E045", "a positive number of seconds",
        "Use the default 5.0."),
    "PRESENCE_LEAVE_GRACE": (
        dict(allow_none=True, allow_zero=True), "E046", "0 or more seconds, or None",
        "Use the default 5.0, so a reload does not blink; 0 or None leaves at once."),
    "PRESENCE_BROADCAST_INTERVAL": (
        dict(allow_none=True), "E047", "a positive number of seconds or None",
        "Leave it None: one presence_diff per room per tick."),
    "PRESENCE_STORE_TIMEOUT": (
        dict(allow_none=False), "E048", "a positive number of seconds",
        "Use the default 2.0: no store call, and no admin page, waits longer than this."),
    "PRESENCE_COUNT_INTERVAL": (
        dict(allow_none=False), "E050", "a positive number of seconds",
        "Use the default 2.0."),
    "PRESENCE_SIGNAL_RATE": (
        dict(allow_none=True), "E052", "a positive number of broadcasts per second or None",
        "Use the default 10.0; None sends every broadcast."),
}
_COUNTS = {
    "PRESENCE_FULL_LIST_MAX": (
        dict(allow_none=True, minimum=0), "E049", "an integer, 0 or more, or None",
        "Use the default 200; None always sends the member list."),
    "PRESENCE_MAX_MEMBERS": (
        dict(allow_none=True), "E051", "a positive integer or None",
        "Leave it None for rooms of any size."),
    "PRESENCE_MAX_TABS_PER_MEMBER": (
        dict(allow_none=True), "E054", "a positive integer or None",
        "Use the default 10; None lets one member open any number of tabs in a room."),
    "PRESENCE_SIGNAL_FANOUT": (
        dict(allow_none=True), "E055", "a positive integer (frames per second) or None",
        "Use the default 5000; None lets signals cost a process without bound."),
    "PRESENCE_REDIS_MAX_CONNECTIONS": (
        dict(allow_none=False), "E053", "a positive integer",
        "Use the default 50: callers wait for a free connection, they never fail."),
}


@register(Tags.compatibility)
def check_presence(app_configs=None, **kwargs) -> list:
    """Validate every PRESENCE_* setting, and the presence times against the tick."""
    problems = _check_store()
    prefix = conf.get("PRESENCE_KEY_PREFIX")
    if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix):
        problems.append(Error(
            f"PRESENCE_KEY_PREFIX must be a non-empty string without spaces, not {prefix!r}.",
            hint='Use the default "heartbeat", or one prefix per site sharing a Redis.',
            id="heartbeat_app.E042",
        ))
    valid = {}
    for name, (shape, check_id, must, hint) in _SECONDS.items():
        value = conf.get(name)
        if is_seconds(value, **shape):
            valid[name] = value
        else:
            problems.append(_invalid(name, value, must, hint, check_id))
    for name, (shape, check_id, must, hint) in _COUNTS.items():
        value = conf.get(name)
        if not is_count(value, **shape):
            problems.append(_invalid(name, value, must, hint, check_id))
    return problems + _check_relations(valid)


def _invalid(name: str, value: Any, must: str, hint: str, check_id: str) -> Error:
    return Error(f"{name} must be {must}, not {value!r}.", hint=hint,
                 id=f"heartbeat_app.{check_id}")


def _check_store() -> list:
    """PRESENCE_STORE names a store that can be built; PRESENCE_REDIS_URL is a Redis."""
    from ..stores import BaseStore, redis_url

    problems = []
    choice = conf.get("PRESENCE_STORE")
    layer = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get("default") or {}
    url = conf.get("PRESENCE_REDIS_URL")
    if not _is_redis_url(url):
        problems.append(Error(
            "PRESENCE_REDIS_URL must be None, a redis://, rediss:// or unix:// URL, or a "
            'Sentinel spec {"sentinels": [(host, port), ...], "master_name": "..."}, '
            f"not {url!r}.",
            hint="Leave it None to use the first host of the channels_redis layer.",
            id="heartbeat_app.E041",
        ))
    if choice is None:
        layer_is_redis = str(layer.get("BACKEND", "")).startswith("channels_redis.")
        choice = "redis" if layer_is_redis else "memory"
    if choice == "memory":
        return problems
    if choice == "redis":
        if importlib.util.find_spec("redis") is None:
            problems.append(Error(
                "The presence store is Redis, but redis-py is not installed.",
                hint='pip install "django-heartbeat-app[redis]", or set '
                     'PRESENCE_STORE = "memory" for a single process.',
                id="heartbeat_app.E040",
            ))
        elif not problems:
            try:
                redis_url(layer)
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                problems.append(Error(
                    f"The Redis presence store has no address: {exc}",
                    hint="Set PRESENCE_REDIS_URL, or give the channels_redis layer's first "
                         'host an "address".',
                    id="heartbeat_app.E041",
                ))
        return problems
    reason = None
    if not isinstance(choice, str):
        reason = "it is not a string"
    else:
        try:
            store = import_string(choice)
        except ImportError as exc:
            reason = f"it cannot be imported ({exc})"
        else:
            if not (isinstance(store, type) and issubclass(store, BaseStore)):
                reason = "it is not a subclass of heartbeat_app.stores.BaseStore"
    if reason:
        problems.append(Error(
            f'PRESENCE_STORE must be None, "memory", "redis" or the dotted path of a '
            f"BaseStore subclass; {choice!r} is refused: {reason}.",
            hint="Leave it None to follow the channel layer: Redis with channels_redis, "
                 "else memory.",
            id="heartbeat_app.E040",
        ))
    return problems


def _is_redis_url(url: Any) -> bool:
    if url is None:
        return True
    if isinstance(url, str):
        return urlsplit(url).scheme in REDIS_SCHEMES
    if isinstance(url, dict):
        sentinels = url.get("sentinels")
        name = url.get("master_name")
        return (isinstance(sentinels, list | tuple) and len(sentinels) > 0
                and isinstance(name, str) and bool(name))
    return False


def _shorter(a: float, b: float) -> bool:
    # 0.3 s is three ticks of 0.1 s, whatever 3 * 0.1 gives in floating point.
    return a < b and not math.isclose(a, b)


def _check_relations(valid: dict[str, float]) -> list:
    # The tracker refreshes sessions and beats the instance key in one call a tick,
    # and each call may wait up to PRESENCE_STORE_TIMEOUT.
    tick = conf.get("HEARTBEAT_TICK")
    if not is_seconds(tick, allow_none=False):
        tick = 1.0  # heartbeat_app.E003 reports it
    problems = []
    ttl = valid.get("PRESENCE_TTL")
    if ttl is not None and _shorter(ttl, 3 * tick):
        problems.append(Warning(
            f"PRESENCE_TTL ({ttl:g} s) is shorter than three ticks ({tick:g} s each): "
            "presence is refreshed at most once a tick, so a live session's presence may "
            "expire between two refreshes and blink out of its rooms.",
            hint=f"Use at least {3 * tick:g} s (30.0 by default).",
            id="heartbeat_app.W040",
        ))
    instance_ttl = valid.get("PRESENCE_INSTANCE_TTL")
    if instance_ttl is not None and _shorter(instance_ttl, 3 * tick):
        problems.append(Warning(
            f"PRESENCE_INSTANCE_TTL ({instance_ttl:g} s) is shorter than three ticks "
            f"({tick:g} s each): a process beats at most once a tick, so a healthy one may "
            "be taken for lost and its sessions leave with instance_lost.",
            hint=f"Use at least {3 * tick:g} s (15.0 by default).",
            id="heartbeat_app.W041",
        ))
    store_timeout = valid.get("PRESENCE_STORE_TIMEOUT")
    if instance_ttl is not None and store_timeout is not None \
            and store_timeout > instance_ttl / 2:
        problems.append(Warning(
            f"PRESENCE_STORE_TIMEOUT ({store_timeout:g} s) is more than half of "
            f"PRESENCE_INSTANCE_TTL ({instance_ttl:g} s): a slow store holds up the tick "
            "that beats this process so long that the others may take it for lost.",
            hint=f"Use {instance_ttl / 2:g} s or less (the defaults are 2.0 and 15.0).",
            id="heartbeat_app.W042",
        ))
    return problems
