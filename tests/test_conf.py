"""heartbeat_app.conf: lazy, cached settings that follow override_settings."""

import pytest
from django.test import override_settings

from heartbeat_app import conf


def test_values_come_from_the_test_settings():
    assert conf.get("HEARTBEAT_INTERVAL") == 25.0
    assert conf.get("HEARTBEAT_TIMEOUT") == 10.0
    assert conf.get("HEARTBEAT_TICK") == 1.0
    assert (conf.interval(), conf.timeout(), conf.tick()) == (25.0, 10.0, 1.0)


def test_settings_absent_from_django_fall_back_to_the_defaults():
    assert conf.get("HEARTBEAT_RETRY_AFTER_MS") == conf.DEFAULTS["HEARTBEAT_RETRY_AFTER_MS"]
    assert conf.get("HEARTBEAT_RETRY_AFTER_MS") == 5000
    assert conf.get("HEARTBEAT_PHASE_SPREAD") is None
    assert conf.get("HEARTBEAT_PROXY_IDLE_TIMEOUT") is None


def test_a_value_read_once_is_cached():
    value = conf.get("HEARTBEAT_INTERVAL")
    assert conf._cache["HEARTBEAT_INTERVAL"] == value


def test_override_settings_is_seen_and_then_restored():
    assert conf.get("HEARTBEAT_INTERVAL") == 25.0  # cached before the override
    with override_settings(HEARTBEAT_INTERVAL=5, HEARTBEAT_TIMEOUT=2.5, HEARTBEAT_TICK=0.5):
        assert conf.get("HEARTBEAT_INTERVAL") == 5
        assert conf.interval() == 5.0 and isinstance(conf.interval(), float)
        assert conf.timeout() == 2.5
        assert conf.tick() == 0.5
    assert conf.get("HEARTBEAT_INTERVAL") == 25.0
    assert (conf.interval(), conf.timeout(), conf.tick()) == (25.0, 10.0, 1.0)


def test_override_of_a_setting_with_a_default_only_is_seen():
    with override_settings(HEARTBEAT_RETRY_AFTER_MS=100):
        assert conf.get("HEARTBEAT_RETRY_AFTER_MS") == 100
    assert conf.get("HEARTBEAT_RETRY_AFTER_MS") == 5000


def test_unrelated_setting_changes_keep_the_cache():
    conf.get("HEARTBEAT_INTERVAL")
    with override_settings(USE_TZ=False):
        assert "HEARTBEAT_INTERVAL" in conf._cache


@override_settings(HEARTBEAT_TICK=0.25)
def test_override_settings_as_a_decorator_is_seen():
    assert conf.tick() == 0.25


def test_unknown_setting_is_a_key_error():
    with pytest.raises(KeyError, match="HEARTBEAT_NOPE"):
        conf.get("HEARTBEAT_NOPE")
    assert "HEARTBEAT_NOPE" not in conf._cache


@override_settings(HEARTBEAT_INTERVAL=None)
def test_interval_is_none_when_heartbeats_are_off():
    assert conf.interval() is None


@override_settings(HEARTBEAT_TIMEOUT=None)
def test_timeout_is_none_when_zombies_are_never_closed():
    assert conf.timeout() is None
    assert conf.interval() == 25.0
