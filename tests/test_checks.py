"""System checks of heartbeat_app: every id, called directly and through Django."""

import pytest
from channels.layers import channel_layers, get_channel_layer
from django.core import checks as django_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from heartbeat_app import checks
from heartbeat_app.checks import check_channels, check_settings

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


@pytest.mark.parametrize("value", [(20000, "10"), (1, 2, 3, 4), 700, (-1,), (True, 10)])
def test_bad_gc_threshold_is_e008(value):
    assert "E008" in settings_ids(HEARTBEAT_GC_THRESHOLD=value)


@pytest.mark.parametrize("value", [None, (20000, 10, 10), [700]])
def test_good_gc_threshold_passes(value):
    assert "E008" not in settings_ids(HEARTBEAT_GC_THRESHOLD=value)


@pytest.mark.parametrize("name, value, check_id", [
    ("HEARTBEAT_MAX_HANDSHAKES", 0, "heartbeat_app.E012"),
    ("HEARTBEAT_MAX_HANDSHAKES", 12.5, "heartbeat_app.E012"),
    ("HEARTBEAT_CONNECT_RATE", -1, "heartbeat_app.E012"),
    ("HEARTBEAT_RETRY_MIN_MS", -5, "heartbeat_app.E013"),
    ("HEARTBEAT_DRAIN_SPREAD", "5", "heartbeat_app.E013"),
    ("HEARTBEAT_DRAIN_TIMEOUT", 0, "heartbeat_app.E013"),
    ("HEARTBEAT_DRAIN_ON_SIGTERM", "yes", "heartbeat_app.E013"),
])
def test_bad_admission_and_drain_settings_are_errors(settings, name, value, check_id):
    setattr(settings, name, value)
    assert check_id in {e.id for e in check_settings()}


def test_default_admission_and_drain_settings_pass(settings):
    settings.HEARTBEAT_DRAIN_SPREAD = 0  # no spread at all is allowed
    settings.HEARTBEAT_MAX_HANDSHAKES = None
    ids = {e.id for e in check_settings()}
    assert not ids & {"heartbeat_app.E012", "heartbeat_app.E013"}
