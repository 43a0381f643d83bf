"""System checks of heartbeat_app: every id, called directly and through Django."""

import math
import re
from pathlib import Path

import pytest
from channels.layers import channel_layers, get_channel_layer
from django.core import checks as django_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from heartbeat_app import checks, conf
from heartbeat_app.checks import (
    check_channels,
    check_metrics,
    check_presence,
    check_sessions,
    check_settings,
)

PREFIX = "heartbeat_app."
REDIS_LAYER = "channels_redis.core.RedisChannelLayer"
try:
    import redis

    REDIS_PY_MAJOR = int(redis.__version__.split(".")[0])
except ImportError:  # the optional extra is not installed
    REDIS_PY_MAJOR = 0


def ids(messages) -> set[str]:
    """The check ids in ``messages``, without the app prefix."""
    assert all(message.id.startswith(PREFIX) for message in messages)
    return {message.id.removeprefix(PREFIX) for message in messages}


def settings_ids(**overrides) -> set[str]:
    with override_settings(**overrides):
        return ids(check_settings())


def all_ids(**overrides) -> set[str]:
    """The ids every settings check (heartbeat core, rows, presence, metrics) reports."""
    with override_settings(**overrides):
        return ids(check_settings() + check_sessions() + check_presence() + check_metrics())


@pytest.fixture
def fresh_channel_layers():
    """Channels caches built layers; start and end each test without any."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


# Defaults --------------------------------------------------------------------------------


def test_test_settings_raise_nothing(fresh_channel_layers):
    assert check_settings() == []
    assert check_channels() == []
    assert check_sessions() == []
    assert check_presence() == []


def test_the_defaults_raise_nothing():
    assert all_ids(**conf.DEFAULTS) == set()


# Errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, "25", True, float("nan"), float("inf"), [25]])
def test_interval_that_is_not_positive_seconds_is_e001(value):
    assert settings_ids(HEARTBEAT_INTERVAL=value) == {"E001"}


def test_e001_is_an_error_naming_the_value():
    with override_settings(HEARTBEAT_INTERVAL="25"):
        (message,) = check_settings()
    assert isinstance(message, django_checks.Error)
    assert "'25'" in message.msg and message.hint


@pytest.mark.parametrize("value", [0, -10.0, "10", False, float("nan"), float("inf")])
def test_timeout_that_is_not_positive_seconds_is_e002(value):
    found = settings_ids(HEARTBEAT_TIMEOUT=value)
    assert "E002" in found
    assert found <= {"E002", "W001"}


def test_invalid_timeout_is_e002_alone():
    """An invalid timeout is E002 alone, not also W001 (which is for a timeout of None)."""
    assert settings_ids(HEARTBEAT_TIMEOUT=0) == {"E002"}


@pytest.mark.parametrize("value", [0, -1, 2.0, 1.5, None, "1", True, float("nan")])
def test_tick_that_is_not_in_0_to_1_seconds_is_e003(value):
    assert settings_ids(HEARTBEAT_TICK=value) == {"E003"}


@pytest.mark.parametrize("value", [1.0, 1, 0.5, 0.01])
def test_tick_up_to_one_second_is_fine(value):
    assert settings_ids(HEARTBEAT_TICK=value, HEARTBEAT_TIMEOUT=10.0) == set()


@pytest.mark.parametrize("value", [0, -1, "2", True, float("inf")])
def test_phase_spread_that_is_not_positive_seconds_is_e004(value):
    assert settings_ids(HEARTBEAT_PHASE_SPREAD=value) == {"E004"}


def test_phase_spread_that_is_positive_is_fine():
    assert settings_ids(HEARTBEAT_PHASE_SPREAD=2.0) == set()


@pytest.mark.parametrize("value", [0, -60, "60", True, float("nan")])
def test_proxy_idle_timeout_that_is_not_positive_seconds_is_e005(value):
    assert settings_ids(HEARTBEAT_PROXY_IDLE_TIMEOUT=value) == {"E005"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"HEARTBEAT_RATE_LIMIT": 0},
        {"HEARTBEAT_RATE_LIMIT": -1},
        {"HEARTBEAT_RATE_LIMIT": "20"},
        {"HEARTBEAT_RATE_BURST": 0},
        {"HEARTBEAT_RATE_BURST": -5},
        {"HEARTBEAT_RATE_BURST": 1.5},
        {"HEARTBEAT_RATE_BURST": True},
        {"HEARTBEAT_RATE_BURST": None},
    ],
)
def test_bad_rate_limit_or_burst_is_e006(overrides):
    assert settings_ids(**overrides) == {"E006"}


def test_no_rate_limit_is_fine():
    assert settings_ids(HEARTBEAT_RATE_LIMIT=None, HEARTBEAT_RATE_BURST=1) == set()


@pytest.mark.parametrize("value", [-1, "5", 1.5, None, True])
def test_retry_after_that_is_not_a_non_negative_integer_is_e007(value):
    assert settings_ids(HEARTBEAT_RETRY_AFTER_MS=value) == {"E007"}


def test_retry_after_zero_is_fine():
    assert settings_ids(HEARTBEAT_RETRY_AFTER_MS=0) == set()


def test_several_errors_are_reported_together():
    found = settings_ids(
        HEARTBEAT_INTERVAL=0,
        HEARTBEAT_TICK=5,
        HEARTBEAT_PHASE_SPREAD=-1,
        HEARTBEAT_PROXY_IDLE_TIMEOUT=-1,
        HEARTBEAT_RATE_BURST=0,
        HEARTBEAT_RETRY_AFTER_MS=-1,
    )
    assert found == {"E001", "E003", "E004", "E005", "E006", "E007"}


# Warnings --------------------------------------------------------------------------------


def test_timeout_none_with_probes_on_is_w001():
    with override_settings(HEARTBEAT_TIMEOUT=None):
        (message,) = check_settings()
    assert message.id == "heartbeat_app.W001"
    assert isinstance(message, django_checks.Warning)


def test_timeout_none_with_probes_off_is_fine():
    assert settings_ids(HEARTBEAT_TIMEOUT=None, HEARTBEAT_INTERVAL=None) == set()


@pytest.mark.parametrize(
    ("timeout", "tick"), [(1.0, 1.0), (2.0, 1.0), (3.9, 1.0), (1.0, 0.5), (0.1, 0.1)]
)
def test_timeout_shorter_than_four_ticks_is_w002(timeout, tick):
    assert settings_ids(HEARTBEAT_TIMEOUT=timeout, HEARTBEAT_TICK=tick) == {"W002"}


@pytest.mark.parametrize(("timeout", "tick"), [(4.0, 1.0), (2.0, 0.5), (10.0, 1.0)])
def test_timeout_of_four_ticks_or_more_is_fine(timeout, tick):
    assert settings_ids(HEARTBEAT_TIMEOUT=timeout, HEARTBEAT_TICK=tick) == set()


@pytest.mark.parametrize("interval", [0.5, 0.01, 0.999])
def test_interval_under_one_second_is_w003(interval):
    assert settings_ids(HEARTBEAT_INTERVAL=interval) == {"W003"}


def test_interval_of_one_second_is_fine():
    assert settings_ids(HEARTBEAT_INTERVAL=1.0) == set()


def test_interval_above_75_percent_of_the_proxy_timeout_is_w004():
    assert settings_ids(HEARTBEAT_PROXY_IDLE_TIMEOUT=30, HEARTBEAT_INTERVAL=25) == {"W004"}


@pytest.mark.parametrize("proxy", [40, 60, 100.0])
def test_interval_within_75_percent_of_the_proxy_timeout_is_fine(proxy):
    assert settings_ids(HEARTBEAT_PROXY_IDLE_TIMEOUT=proxy, HEARTBEAT_INTERVAL=25) == set()


def test_interval_of_exactly_75_percent_of_the_proxy_timeout_is_fine():
    assert settings_ids(HEARTBEAT_PROXY_IDLE_TIMEOUT=40, HEARTBEAT_INTERVAL=30) == set()


def test_proxy_timeout_with_probes_off_is_w004():
    with override_settings(HEARTBEAT_PROXY_IDLE_TIMEOUT=60, HEARTBEAT_INTERVAL=None):
        (message,) = check_settings()
    assert message.id == "heartbeat_app.W004"
    assert "(off)" in message.msg and "45 s" in message.hint


# Channels --------------------------------------------------------------------------------


def test_no_channel_layers_is_w010(fresh_channel_layers):
    with override_settings(CHANNEL_LAYERS={}):
        assert ids(check_channels()) == {"W010"}


def test_channel_layers_without_a_default_is_w010(fresh_channel_layers):
    layers = {"other": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert ids(check_channels()) == {"W010"}


def test_default_layer_that_cannot_be_built_is_e011(fresh_channel_layers):
    layers = {"default": {"BACKEND": "no_such_package.layers.NoSuchLayer"}}
    with override_settings(CHANNEL_LAYERS=layers):
        (message,) = check_channels()
    assert message.id == "heartbeat_app.E011"
    assert isinstance(message, django_checks.Error)
    # The broken layer did not stay cached: the real one is built again afterwards.
    assert check_channels() == []
    assert get_channel_layer() is not None


def test_missing_channels_package_is_e010(monkeypatch):
    real_find_spec = checks.importlib.util.find_spec
    monkeypatch.setattr(
        checks.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "channels" else real_find_spec(name, *args),
    )
    assert ids(check_channels()) == {"E010"}


@pytest.mark.skipif(REDIS_PY_MAJOR < 8, reason="W011 and W012 are raised with redis-py 8+")
def test_redis_layer_with_default_host_options_is_w011_and_w012(fresh_channel_layers):
    layers = {"default": {"BACKEND": REDIS_LAYER, "CONFIG": {"hosts": ["redis://h:6379"]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert ids(check_channels()) == {"W011", "W012"}


def test_redis_layer_with_long_reads_and_a_big_pool_is_fine(fresh_channel_layers):
    host = {"address": "redis://h:6379", "socket_timeout": 15, "max_connections": 1000}
    layers = {"default": {"BACKEND": REDIS_LAYER, "CONFIG": {"hosts": [host]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert check_channels() == []


# Through Django's check framework ---------------------------------------------------------


def test_checks_are_registered_with_django():
    registered = django_checks.registry.registry.get_checks()
    assert check_settings in registered and check_channels in registered


def test_run_checks_reports_heartbeat_app_ids():
    with override_settings(HEARTBEAT_INTERVAL=0, HEARTBEAT_TIMEOUT=None):
        found = {message.id for message in django_checks.run_checks()}
    assert {"heartbeat_app.E001"} <= found
    assert not {i for i in found if i.startswith(PREFIX)} - {"heartbeat_app.E001"}


def test_check_command_fails_on_a_heartbeat_app_error():
    with override_settings(HEARTBEAT_TICK=5):
        with pytest.raises(SystemCheckError, match=r"heartbeat_app\.E003"):
            call_command("check")


def test_check_command_passes_with_the_test_settings(fresh_channel_layers, capsys):
    call_command("check")
    assert "heartbeat_app" not in capsys.readouterr().err


@pytest.mark.parametrize("value", [(20000, "10"), (1, 2, 3, 4), 700, (-1,), (True, 10), (),
                                   "AUTO", "on", True])
def test_bad_gc_threshold_is_e008(value):
    assert "E008" in settings_ids(HEARTBEAT_GC_THRESHOLD=value)


@pytest.mark.parametrize("value", ["auto", None, (20000, 10, 10), [700]])
def test_good_gc_threshold_passes(value):
    assert "E008" not in settings_ids(HEARTBEAT_GC_THRESHOLD=value)


def test_the_default_gc_threshold_is_auto_and_passes():
    assert conf.DEFAULTS["HEARTBEAT_GC_THRESHOLD"] == "auto"
    assert all_ids() & {"E008", "E014"} == set()


def test_e008_names_the_three_kinds_of_value_and_the_default():
    with override_settings(HEARTBEAT_GC_THRESHOLD="on"):
        error = next(e for e in check_settings() if e.id == "heartbeat_app.E008")
    assert error.msg == ('HEARTBEAT_GC_THRESHOLD must be "auto", None or a tuple of one to '
                         "three non-negative integers, not 'on'.")
    assert 'the default "auto"' in error.hint and "docs/deployment.md" in error.hint


@pytest.mark.parametrize("name, value, check_id", [
    ("HEARTBEAT_MAX_HANDSHAKES", 0, "heartbeat_app.E012"),
    ("HEARTBEAT_MAX_HANDSHAKES", 12.5, "heartbeat_app.E012"),
    ("HEARTBEAT_CONNECT_RATE", -1, "heartbeat_app.E012"),
    ("HEARTBEAT_RETRY_MIN_MS", -5, "heartbeat_app.E013"),
    ("HEARTBEAT_DRAIN_SPREAD", "5", "heartbeat_app.E013"),
    ("HEARTBEAT_DRAIN_TIMEOUT", 0, "heartbeat_app.E013"),
    ("HEARTBEAT_DRAIN_RATE", -10, "heartbeat_app.E013"),
    ("HEARTBEAT_DRAIN_RATE", "400", "heartbeat_app.E013"),
    ("HEARTBEAT_DRAIN_ON_SIGTERM", "yes", "heartbeat_app.E013"),
    ("HEARTBEAT_DRAIN_STOP_LISTENING", 1, "heartbeat_app.E013"),
    ("HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT", -1.0, "heartbeat_app.E016"),
    ("HEARTBEAT_PACE_DAPHNE", 1, "heartbeat_app.E017"),
])
def test_bad_admission_and_drain_settings_are_errors(settings, name, value, check_id):
    setattr(settings, name, value)
    assert check_id in {e.id for e in check_settings()}


def test_default_admission_and_drain_settings_pass(settings):
    settings.HEARTBEAT_DRAIN_SPREAD = 0  # no spread at all is allowed
    settings.HEARTBEAT_MAX_HANDSHAKES = None
    ids = {e.id for e in check_settings()}
    assert not ids & {"heartbeat_app.E012", "heartbeat_app.E013"}


@pytest.mark.parametrize("spread, grace, timeout", [(14.0, 5.0, 20.0), (2.0, 20.0, 20.0)])
def test_a_drain_whose_spread_and_grace_outlast_its_timeout_is_w013(settings, spread, grace,
                                                                    timeout):
    settings.HEARTBEAT_DRAIN_SPREAD = spread
    settings.PRESENCE_LEAVE_GRACE = grace
    settings.HEARTBEAT_DRAIN_TIMEOUT = timeout
    warning = next(e for e in check_settings() if e.id == "heartbeat_app.W013")
    assert "HEARTBEAT_DRAIN_TIMEOUT" in warning.msg


@pytest.mark.parametrize("spread, grace, timeout", [(2.0, 5.0, 20.0), (13.0, 5.0, 20.0),
                                                    (None, 5.0, 7.0)])
def test_a_drain_spread_within_its_timeout_is_fine(settings, spread, grace, timeout):
    settings.HEARTBEAT_DRAIN_SPREAD = spread
    settings.PRESENCE_LEAVE_GRACE = grace
    settings.HEARTBEAT_DRAIN_TIMEOUT = timeout
    assert "heartbeat_app.W013" not in {e.id for e in check_settings()}


# Every setting ---------------------------------------------------------------------------

#: One bad value of every setting in conf.DEFAULTS, and the one check that refuses it.
BAD_VALUES = {
    "HEARTBEAT_INTERVAL": (1e9, "E009"),
    "HEARTBEAT_TIMEOUT": (1e9, "E009"),
    "HEARTBEAT_TICK": (0, "E003"),
    "HEARTBEAT_PHASE_SPREAD": (-1, "E004"),
    "HEARTBEAT_PROXY_IDLE_TIMEOUT": ("60", "E005"),
    "HEARTBEAT_RATE_LIMIT": (0, "E006"),
    "HEARTBEAT_RATE_BURST": (0, "E006"),
    "HEARTBEAT_RETRY_AFTER_MS": (-1, "E007"),
    "HEARTBEAT_MESSAGE_RATE": (0, "E015"),
    "HEARTBEAT_MESSAGE_BURST": (1.5, "E015"),
    "HEARTBEAT_INBOX_MAX": (0, "E015"),
    "HEARTBEAT_RECORD_ANONYMOUS": ("no", "E034"),
    "HEARTBEAT_SESSION_LOG": ("xml", "E035"),
    "HEARTBEAT_MAX_HANDSHAKES": (0, "E012"),
    "HEARTBEAT_CONNECT_RATE": (-1, "E012"),
    "HEARTBEAT_RETRY_MIN_MS": (-5, "E013"),
    "HEARTBEAT_DRAIN_SPREAD": (-1, "E013"),
    "HEARTBEAT_DRAIN_RATE": (0, "E013"),
    "HEARTBEAT_DRAIN_TIMEOUT": (None, "E013"),
    "HEARTBEAT_DRAIN_ON_SIGTERM": ("yes", "E013"),
    "HEARTBEAT_DRAIN_STOP_LISTENING": ("no", "E013"),
    "HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT": (0, "E016"),
    "HEARTBEAT_PACE_DAPHNE": ("yes", "E017"),
    "HEARTBEAT_HOLD_UNTIL_JOINED": ("yes", "E012"),
    "HEARTBEAT_METRICS": ("yes", "E021"),
    "HEARTBEAT_GC_THRESHOLD": ([1, 2], "E014"),
    "HEARTBEAT_RECORD_SESSIONS": ("yes", "E030"),
    "HEARTBEAT_CHECKPOINT_INTERVAL": (0, "E031"),
    "HEARTBEAT_SESSION_RETENTION_DAYS": (-3, "E032"),
    "PRESENCE_STORE": ("myapp.stores.Nope", "E040"),
    "PRESENCE_REDIS_URL": ("http://127.0.0.1:6379", "E041"),
    "PRESENCE_KEY_PREFIX": ("", "E042"),
    "PRESENCE_TTL": ("x", "E043"),
    "PRESENCE_INSTANCE_TTL": (0, "E044"),
    "PRESENCE_REAP_INTERVAL": (-5, "E045"),
    "PRESENCE_LEAVE_GRACE": (-1, "E046"),
    "PRESENCE_BROADCAST_INTERVAL": (0, "E047"),
    "PRESENCE_STORE_TIMEOUT": (None, "E048"),
    "PRESENCE_FULL_LIST_MAX": (-1, "E049"),
    "PRESENCE_COUNT_INTERVAL": (0, "E050"),
    "PRESENCE_MAX_MEMBERS": (0, "E051"),
    "PRESENCE_MAX_TABS_PER_MEMBER": (0, "E054"),
    "PRESENCE_SIGNAL_RATE": (float("nan"), "E052"),
    "PRESENCE_SIGNAL_FANOUT": (0, "E055"),
    "PRESENCE_REDIS_MAX_CONNECTIONS": (0, "E053"),
    "HEARTBEAT_METRICS_ALLOWED_IPS": (["localhost"], "E020"),
    "HEARTBEAT_METRICS_ALLOW_STAFF": ("yes", "E020"),
}


def test_every_setting_has_a_check():
    """A setting added to conf.DEFAULTS without a check (and a bad value here) fails."""
    assert set(BAD_VALUES) == set(conf.DEFAULTS)


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_bad_value_of_each_setting_is_refused_by_its_check(name):
    value, check_id = BAD_VALUES[name]
    assert all_ids(**{name: value}) == {check_id}


def test_presence_ttl_that_is_not_seconds_fails_the_check_command():
    """The issue's case: PRESENCE_TTL = "x" used to pass check, then fail every connection."""
    with override_settings(PRESENCE_TTL="x"):
        with pytest.raises(SystemCheckError, match=r"heartbeat_app\.E043"):
            call_command("check")


def test_new_errors_name_the_setting_and_the_value_and_carry_a_hint():
    with override_settings(PRESENCE_LEAVE_GRACE=-1, HEARTBEAT_SESSION_RETENTION_DAYS=-3):
        messages = check_sessions() + check_presence()
    by_id = {message.id.removeprefix(PREFIX): message for message in messages}
    assert set(by_id) == {"E032", "E046"}
    assert "PRESENCE_LEAVE_GRACE" in by_id["E046"].msg and "-1" in by_id["E046"].msg
    assert "HEARTBEAT_SESSION_RETENTION_DAYS" in by_id["E032"].msg
    assert all(isinstance(m, django_checks.Error) and m.hint for m in messages)


# The heartbeat core: timers and the collector

@pytest.mark.parametrize("name", ["HEARTBEAT_INTERVAL", "HEARTBEAT_TIMEOUT"])
def test_seconds_beyond_a_browser_timer_are_e009(name):
    assert all_ids(**{name: checks.MAX_TIMER_SECONDS + 1}) == {"E009"}


@pytest.mark.parametrize("name", ["HEARTBEAT_INTERVAL", "HEARTBEAT_TIMEOUT"])
def test_seconds_up_to_a_browser_timer_are_not_e009(name):
    assert "E009" not in all_ids(**{name: math.floor(checks.MAX_TIMER_SECONDS)})


@pytest.mark.parametrize("value", [[1, 2], (1,), (99, 10, 10), (0, 10, 10), [0]])
def test_gc_threshold_that_collects_all_the_time_or_never_is_e014(value):
    assert all_ids(HEARTBEAT_GC_THRESHOLD=value) == {"E014"}


@pytest.mark.parametrize("value", [(100,), (700, 10, 10), [20000, 10, 10], (50000, 20, 100)])
def test_gc_threshold_that_collects_less_often_is_fine(value):
    assert all_ids(HEARTBEAT_GC_THRESHOLD=value) == set()


def test_gc_threshold_of_a_bad_shape_is_e008_alone():
    assert all_ids(HEARTBEAT_GC_THRESHOLD=(1, "2")) == {"E008"}


def test_e014_says_why_and_offers_auto_and_none():
    with override_settings(HEARTBEAT_GC_THRESHOLD=(0, 10, 10)):
        (error,) = [e for e in check_settings() if e.id == "heartbeat_app.E014"]
    assert error.msg.startswith("HEARTBEAT_GC_THRESHOLD is (0, 10, 10): its first value 0 "
                                "turns automatic collection off")
    assert '"auto" (the default)' in error.hint and "None" in error.hint


# Session rows

@pytest.mark.parametrize("value", [None, 1, 0, "True"])
def test_record_sessions_that_is_not_a_boolean_is_e030(value):
    assert all_ids(HEARTBEAT_RECORD_SESSIONS=value) == {"E030"}


@pytest.mark.parametrize("value", [0, -5, None, "5", True, float("inf")])
def test_checkpoint_interval_that_is_not_positive_seconds_is_e031(value):
    assert all_ids(HEARTBEAT_RECORD_SESSIONS=True, HEARTBEAT_CHECKPOINT_INTERVAL=value) == {
        "E031"}


@pytest.mark.parametrize("value", [-3, -0.5, "30", True, float("nan")])
def test_retention_that_is_not_days_is_e032(value):
    assert all_ids(HEARTBEAT_SESSION_RETENTION_DAYS=value) == {"E032"}


@pytest.mark.parametrize("value", [None, 0, 1, 0.5, 365])
def test_retention_of_days_or_none_is_fine(value):
    assert all_ids(HEARTBEAT_SESSION_RETENTION_DAYS=value) == set()


@pytest.mark.parametrize(("checkpoint", "ttl"), [(5.0, 15.0), (30.0, 15.0), (0.3, 15.0),
                                               (3600.0, 5.0)])
def test_any_checkpoint_interval_goes_with_any_instance_ttl(checkpoint, ttl):
    """The instance row is beaten every third of its TTL whatever the checkpoint interval
    (tests/test_recorder.py), so the two settings no longer bound each other (E033 and
    W030 are retired)."""
    assert all_ids(HEARTBEAT_RECORD_SESSIONS=True, HEARTBEAT_CHECKPOINT_INTERVAL=checkpoint,
                   PRESENCE_INSTANCE_TTL=ttl) == set()


# Presence: the store

@pytest.mark.parametrize("value", [
    "nowhere.Store", "heartbeat_app.conf.get", "heartbeat_app.models.Session", 42, "",
])
def test_store_that_is_not_a_store_is_e040(value):
    assert all_ids(PRESENCE_STORE=value) == {"E040"}


@pytest.mark.parametrize("value", [None, "memory", "heartbeat_app.stores.MemoryStore"])
def test_memory_or_a_store_class_is_fine(value):
    assert all_ids(PRESENCE_STORE=value) == set()


def test_redis_store_is_fine_with_redis_py(fresh_channel_layers):
    assert all_ids(PRESENCE_STORE="redis", PRESENCE_REDIS_URL="redis://127.0.0.1:6379/0") \
        == set()


def test_redis_store_without_redis_py_is_e040(monkeypatch):
    real_find_spec = checks.importlib.util.find_spec
    monkeypatch.setattr(
        checks.importlib.util, "find_spec",
        lambda name, *args: None if name == "redis" else real_find_spec(name, *args))
    assert all_ids(PRESENCE_STORE="redis") == {"E040"}


def test_store_following_a_redis_layer_without_redis_py_is_e040(monkeypatch):
    real_find_spec = checks.importlib.util.find_spec
    monkeypatch.setattr(
        checks.importlib.util, "find_spec",
        lambda name, *args: None if name == "redis" else real_find_spec(name, *args))
    layers = {"default": {"BACKEND": REDIS_LAYER, "CONFIG": {"hosts": ["redis://h:6379"]}}}
    assert all_ids(CHANNEL_LAYERS=layers) == {"E040"}


@pytest.mark.parametrize("value", [
    "http://127.0.0.1:6379", "127.0.0.1:6379", 6379, {"sentinels": []},
    {"sentinels": [("h", 26379)]}, {"master_name": "mymaster"},
])
def test_redis_url_that_is_not_a_redis_is_e041(value):
    assert all_ids(PRESENCE_REDIS_URL=value) == {"E041"}


@pytest.mark.parametrize("value", [
    None, "redis://127.0.0.1:6379/0", "rediss://h:6380", "unix:///run/redis.sock",
    {"sentinels": [("h", 26379)], "master_name": "mymaster"},
])
def test_redis_url_or_a_sentinel_spec_is_fine(value):
    assert all_ids(PRESENCE_REDIS_URL=value) == set()


def test_redis_store_whose_layer_host_has_no_address_is_e041():
    layers = {"default": {"BACKEND": REDIS_LAYER, "CONFIG": {"hosts": [{"db": 3}]}}}
    assert all_ids(CHANNEL_LAYERS=layers) == {"E041"}


@pytest.mark.parametrize("value", ["", "my prefix", None, 7, b"heartbeat"])
def test_key_prefix_that_is_not_a_word_is_e042(value):
    assert all_ids(PRESENCE_KEY_PREFIX=value) == {"E042"}


# Presence: times and limits

PRESENCE_BAD = [
    ("PRESENCE_TTL", ["x", 0, -1, None, True, float("inf")], "E043"),
    ("PRESENCE_INSTANCE_TTL", [0, -15, None, "15"], "E044"),
    ("PRESENCE_REAP_INTERVAL", [0, -5, None, "5"], "E045"),
    ("PRESENCE_LEAVE_GRACE", [-1, "5", True, float("nan")], "E046"),
    ("PRESENCE_BROADCAST_INTERVAL", [0, -1, "1"], "E047"),
    ("PRESENCE_STORE_TIMEOUT", [0, -2, None, "2"], "E048"),
    ("PRESENCE_FULL_LIST_MAX", [-1, 1.5, "200", True], "E049"),
    ("PRESENCE_COUNT_INTERVAL", [0, None, "2"], "E050"),
    ("PRESENCE_MAX_MEMBERS", [0, -1, 10.5, "10"], "E051"),
    ("PRESENCE_MAX_TABS_PER_MEMBER", [0, -1, 2.5, "10", True], "E054"),
    ("PRESENCE_SIGNAL_RATE", [0, -10, "10", float("nan")], "E052"),
    ("PRESENCE_SIGNAL_FANOUT", [0, -1, 2.5, "20000", True], "E055"),
    ("PRESENCE_REDIS_MAX_CONNECTIONS", [0, None, 50.0, "50"], "E053"),
]


@pytest.mark.parametrize(("name", "value", "check_id"), [
    (name, value, check_id) for name, values, check_id in PRESENCE_BAD for value in values])
def test_bad_presence_value_is_an_error(name, value, check_id):
    assert all_ids(**{name: value}) == {check_id}


@pytest.mark.parametrize(("name", "value"), [
    ("PRESENCE_LEAVE_GRACE", 0), ("PRESENCE_LEAVE_GRACE", None),
    ("PRESENCE_BROADCAST_INTERVAL", None), ("PRESENCE_BROADCAST_INTERVAL", 0.5),
    ("PRESENCE_FULL_LIST_MAX", 0), ("PRESENCE_FULL_LIST_MAX", None),
    ("PRESENCE_MAX_MEMBERS", None), ("PRESENCE_MAX_MEMBERS", 1000),
    ("PRESENCE_MAX_TABS_PER_MEMBER", None), ("PRESENCE_MAX_TABS_PER_MEMBER", 1),
    ("PRESENCE_SIGNAL_RATE", None), ("PRESENCE_SIGNAL_RATE", 30),
    ("PRESENCE_SIGNAL_FANOUT", None), ("PRESENCE_SIGNAL_FANOUT", 1),
    ("PRESENCE_TTL", 60), ("PRESENCE_REDIS_MAX_CONNECTIONS", 1),
])
def test_good_presence_value_is_fine(name, value):
    assert all_ids(**{name: value}) == set()


@pytest.mark.parametrize(("ttl", "tick"), [(2.0, 1.0), (0.5, 0.2)])
def test_presence_ttl_shorter_than_three_ticks_is_w040(ttl, tick):
    assert all_ids(PRESENCE_TTL=ttl, HEARTBEAT_TICK=tick, HEARTBEAT_TIMEOUT=10.0) == {"W040"}


@pytest.mark.parametrize(("ttl", "tick"), [(2.0, 1.0), (0.5, 0.2)])
def test_instance_ttl_shorter_than_three_ticks_is_w041(ttl, tick):
    assert all_ids(PRESENCE_INSTANCE_TTL=ttl, HEARTBEAT_TICK=tick,
                   PRESENCE_STORE_TIMEOUT=0.1) == {"W041"}


def test_presence_ttls_of_three_ticks_are_fine():
    assert all_ids(PRESENCE_TTL=0.3, PRESENCE_INSTANCE_TTL=0.3, PRESENCE_STORE_TIMEOUT=0.1,
                   HEARTBEAT_TICK=0.1, HEARTBEAT_TIMEOUT=1.0) == set()


@pytest.mark.parametrize(("store_timeout", "ttl"), [(8.0, 15.0), (15.0, 15.0), (30.0, 15.0)])
def test_store_timeout_over_half_the_instance_ttl_is_w042(store_timeout, ttl):
    assert all_ids(PRESENCE_STORE_TIMEOUT=store_timeout, PRESENCE_INSTANCE_TTL=ttl) == {"W042"}


# The reference page ----------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
CHECKS_DIR = Path(checks.__file__).parent


def test_settings_reference_lists_every_setting_in_defaults_with_its_default():
    rows = {}
    for line in DOCS.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0] \
            .splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) >= 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    assert set(conf.DEFAULTS) <= set(rows), sorted(set(conf.DEFAULTS) - set(rows))
    for name, default in conf.DEFAULTS.items():
        shown = f'"{default}"' if isinstance(default, str) else repr(default)
        assert rows[name] == f"`{shown}`", (name, rows[name])


def test_every_check_id_is_documented_and_every_documented_id_exists():
    in_code = set()
    for path in CHECKS_DIR.glob("*.py"):
        # id="heartbeat_app.E001", or a bare "E043" in a table of checks
        found = re.findall(r'"(?:heartbeat_app\.)?([EW]\d{3})"', path.read_text())
        in_code |= {PREFIX + check_id for check_id in found}
    in_docs = set(re.findall(r"^\| `(heartbeat_app\.[EW]\d{3})` \|", DOCS.read_text(), re.M))
    assert in_code == in_docs
