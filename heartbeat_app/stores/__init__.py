"""Presence stores: the contract (base), the memory and Redis backends, and the factory.

``get_store()`` builds the process's store from the settings on first use; this
module owns that cached object and forgets it itself when a setting it depends
on changes (as Channels' layer manager does), so ``override_settings`` works.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .. import conf
from .base import BaseStore, Change, ReapResult, StoreUnavailable, group_members, new_ref
from .memory import MemoryStore

__all__ = [
    "BaseStore", "Change", "MemoryStore", "ReapResult", "StoreUnavailable", "get_store",
    "group_members", "new_ref", "redis_url", "reset_store",
]

_store: BaseStore | None = None


def get_store() -> BaseStore:
    """The process's presence store, built from the settings on first use."""
    global _store
    if _store is None:
        _store = _build_store()
    return _store


def reset_store() -> None:
    """Forget the store; the next call builds a new one from the settings."""
    global _store
    _store = None


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("PRESENCE_") or setting == "CHANNEL_LAYERS":
        reset_store()


def _layer_config() -> dict:
    return (getattr(settings, "CHANNEL_LAYERS", None) or {}).get("default") or {}


def _build_store() -> BaseStore:
    choice = conf.get("PRESENCE_STORE")
    layer = _layer_config()
    if choice is None:
        choice = "redis" if str(layer.get("BACKEND", "")).startswith("channels_redis.") \
            else "memory"
    if choice == "memory":
        return MemoryStore()
    if choice == "redis":
        from .redis import RedisStore

        return RedisStore(
            redis_url(layer),
            prefix=conf.get("PRESENCE_KEY_PREFIX"),
            max_connections=conf.get("PRESENCE_REDIS_MAX_CONNECTIONS"),
            timeout=conf.get("PRESENCE_STORE_TIMEOUT"),
        )
    return import_string(choice)()


def redis_url(layer: dict) -> str | dict:
    """PRESENCE_REDIS_URL, else the first host of the channels_redis layer.

    A Sentinel host of the layer is returned as its spec, which the store follows.
    """
    url = conf.get("PRESENCE_REDIS_URL")
    if url:
        return url
    hosts = (layer.get("CONFIG") or {}).get("hosts") or [("localhost", 6379)]
    host = hosts[0]
    if isinstance(host, str):
        return host
    if isinstance(host, dict) and "address" in host:
        return host["address"]
    if isinstance(host, dict) and "sentinels" in host:
        return {k: host[k] for k in ("sentinels", "master_name", "sentinel_kwargs") if k in host}
    if isinstance(host, (list, tuple)):
        return f"redis://{host[0]}:{host[1]}"
    raise ValueError("Set PRESENCE_REDIS_URL: the channel layer's first host has no address.")
