"""The Prometheus exporter and the metrics views: values, types, label sets, access, modes."""

import asyncio
import subprocess
import weakref

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.test import AsyncRequestFactory, override_settings
from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values
from prometheus_client.parser import text_string_to_metric_families

from heartbeat_app import prometheus, views
from heartbeat_app import runtime as runtime_module
from heartbeat_app.checks import check_metrics
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.metrics import SECONDS_BUCKETS, Metrics, NullCounter, NullHistogram
from heartbeat_app.protocol import CloseReason
from heartbeat_app.testing import HeartbeatCommunicator, plugin

# The kit's clock (the plugin's entry point loads it once the package is installed).
heartbeat_clock = plugin.heartbeat_clock

# Every label a series may carry: bounded sets only, never a room, a user or a session.
BOUNDED_LABELS = {"reason", "op", "why", "le"}
KINDS = {"counter", "gauge", "histogram"}


def parse(text: str | bytes) -> dict[str, object]:
    """Families of an exposition by their exposed name (counters keep their _total)."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = family
    return out


def sample(family, suffix: str = "", **labels) -> float:
    """The value of one sample of a family, by its name suffix and labels."""
    wanted = family.name + suffix
    for s in family.samples:
        if s.name == wanted and s.labels == labels:
            return s.value
    raise AssertionError(f"no sample {wanted}{labels} in {family.samples}")


@pytest.fixture
def own_runtimes(monkeypatch):
    """No runtime of another test is merged into the snapshot of this one."""
    monkeypatch.setattr(runtime_module, "_runtimes", weakref.WeakKeyDictionary())


@pytest.fixture
async def counted(own_runtimes, make_runtime):
    """A runtime whose metrics hold known values."""
    rt = make_runtime()
    m = rt.metrics
    m.opened.inc(5)
    m.sessions.inc(5)
    m.sessions.dec(2)
    m.closed.inc(reason=str(CloseReason.TIMEOUT))
    m.closed.inc(2, reason=str(CloseReason.CLOSED))
    m.zombies.inc()
    m.pings.inc(40)
    m.probes.inc(7)
    m.rtt.observe(0.004)
    m.rtt.observe(0.02)
    m.rtt.observe(30.0)  # above the last bound: only in +Inf
    m.store_seconds.observe(0.0005, op="join")
    m.refused.inc(3, why="in_flight")
    m.rooms.set_function(lambda: 4)
    return rt


@pytest.fixture
def one_process(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)


# One process: the custom collector ---------------------------------------------------


async def test_every_declared_metric_is_exposed_with_its_type(counted, one_process):
    body, content_type = prometheus.exposition()
    assert content_type.startswith("text/plain")
    exposed = parse(body)
    for name, metric in Metrics().registry.metrics.items():
        assert name in exposed, name
        assert exposed[name].type == metric.kind
    assert {metric.kind for metric in Metrics().registry.metrics.values()} <= KINDS


async def test_counters_and_gauges_carry_the_runtime_values(counted, one_process):
    exposed = parse(prometheus.exposition()[0])
    assert sample(exposed["heartbeat_sessions_opened_total"], "_total") == 5
    assert sample(exposed["heartbeat_sessions"]) == 3
    assert sample(exposed["heartbeat_presence_rooms"]) == 4
    assert sample(exposed["heartbeat_zombies_total"], "_total") == 1
    assert sample(exposed["heartbeat_pings_total"], "_total") == 40
    assert sample(exposed["heartbeat_probes_total"], "_total") == 7
    closed = exposed["heartbeat_sessions_closed_total"]
    assert sample(closed, "_total", reason="timeout") == 1
    assert sample(closed, "_total", reason="closed") == 2
    refused = exposed["heartbeat_handshakes_refused_total"]
    assert sample(refused, "_total", why="in_flight") == 3


async def test_close_reasons_exist_at_zero_before_anything_closes(own_runtimes, make_runtime,
                                                                  one_process):
    make_runtime()
    closed = parse(prometheus.exposition()[0])["heartbeat_sessions_closed_total"]
    reasons = {s.labels["reason"]: s.value for s in closed.samples if s.name.endswith("_total")}
    assert set(reasons) == {r.value for r in CloseReason} - {"instance_lost"}
    assert set(reasons.values()) == {0}


async def test_a_histogram_is_cumulative_with_inf_count_and_sum(counted, one_process):
    rtt = parse(prometheus.exposition()[0])["heartbeat_rtt_seconds"]
    buckets = [(s.labels["le"], s.value) for s in rtt.samples if s.name.endswith("_bucket")]
    assert [le for le, _ in buckets] == [str(b) for b in SECONDS_BUCKETS] + ["+Inf"]
    counts = [n for _, n in buckets]
    assert counts == sorted(counts)  # cumulative
    assert dict(buckets)["0.0025"] == 0 and dict(buckets)["0.005"] == 1
    assert dict(buckets)["0.025"] == 2 and dict(buckets)["10.0"] == 2
    assert dict(buckets)["+Inf"] == sample(rtt, "_count") == 3
    assert sample(rtt, "_sum") == pytest.approx(30.024)


async def test_a_labelled_histogram_has_one_series_per_operation(counted, one_process):
    store = parse(prometheus.exposition()[0])["heartbeat_presence_store_seconds"]
    assert sample(store, "_count", op="join") == 1
    assert {s.labels.get("op") for s in store.samples} == {"join"}


async def test_no_series_carries_an_unbounded_label(counted, one_process):
    for family in parse(prometheus.exposition()[0]).values():
        if family.name.startswith("heartbeat_"):
            for s in family.samples:
                assert set(s.labels) <= BOUNDED_LABELS, (s.name, s.labels)


def test_declared_labels_are_bounded():
    for metric in Metrics().registry.metrics.values():
        assert set(metric.labels) <= BOUNDED_LABELS, metric.name


async def test_two_runtimes_of_one_process_add_up(own_runtimes, make_runtime, one_process,
                                                  fake_clock):
    from heartbeat_app.runtime import Runtime

    first = make_runtime()
    first.metrics.opened.inc(2)
    other = Runtime(fake_clock)  # another event loop's runtime, as the snapshot sees it
    other.metrics.opened.inc(3)
    merged = runtime_module.merge([first.metrics.registry.snapshot(),
                                   other.metrics.registry.snapshot()])
    exposed = parse(generate_latest(_registry_of(merged)))
    assert sample(exposed["heartbeat_sessions_opened_total"], "_total") == 5


def _registry_of(snapshot):
    class Fixed:
        def collect(self):
            return prometheus.families(snapshot)

    registry = CollectorRegistry()
    registry.register(Fixed())
    return registry


async def test_openmetrics_is_served_when_the_scraper_asks_for_it(counted, one_process):
    body, content_type = prometheus.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert b"heartbeat_zombies_total 1.0" in body


def test_the_collector_is_registered_once():
    assert prometheus.register() is prometheus.register()


# Several workers: the mirror into prometheus_client's multiprocess files --------------


@pytest.fixture
def multiproc(tmp_path, monkeypatch):
    """prometheus_client's multiprocess mode in a fresh directory; workers are made by pid."""
    path = tmp_path / "multiproc"
    path.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))
    monkeypatch.setattr(prometheus, "_mirror", None)
    previous = values.ValueClass

    def worker(pid: int) -> prometheus.Mirror:
        values.ValueClass = values.MultiProcessValue(lambda: pid)
        try:
            return prometheus.Mirror()
        finally:
            values.ValueClass = previous

    yield path, worker
    values.ValueClass = previous


def merged_files(path) -> dict:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(path))
    return parse(generate_latest(registry))


def _snap(**counts):
    """A snapshot as one runtime of a worker would give it."""
    m = Metrics()
    m.opened.inc(counts.get("opened", 0))
    m.sessions.inc(counts.get("sessions", 0))
    m.zombies.inc(counts.get("zombies", 0))
    for value in counts.get("rtt", ()):
        m.rtt.observe(value)
    if counts.get("timeouts"):
        m.closed.inc(counts["timeouts"], reason="timeout")
    return m.registry.snapshot()


def test_two_workers_mirrored_add_up_in_the_multiprocess_files(multiproc):
    path, worker = multiproc
    a, b = worker(1001), worker(1002)
    a.sync(_snap(opened=3, sessions=2, zombies=1, timeouts=1, rtt=[0.004]))
    b.sync(_snap(opened=4, sessions=1, rtt=[0.02, 30.0]))
    exposed = merged_files(path)
    assert sample(exposed["heartbeat_sessions_opened_total"], "_total") == 7
    assert sample(exposed["heartbeat_sessions"]) == 3  # livesum
    assert sample(exposed["heartbeat_zombies_total"], "_total") == 1
    closed = exposed["heartbeat_sessions_closed_total"]
    assert sample(closed, "_total", reason="timeout") == 1
    assert sample(closed, "_total", reason="closed") == 0  # made at zero
    rtt = exposed["heartbeat_rtt_seconds"]
    assert sample(rtt, "_bucket", le="0.005") == 1
    assert sample(rtt, "_bucket", le="0.025") == 2
    assert sample(rtt, "_bucket", le="+Inf") == sample(rtt, "_count") == 3
    assert sample(rtt, "_sum") == pytest.approx(30.024)


def test_a_sync_adds_only_what_grew(multiproc):
    path, worker = multiproc
    a = worker(1001)
    a.sync(_snap(opened=3, rtt=[0.004]))
    a.sync(_snap(opened=3, rtt=[0.004]))
    a.sync(_snap(opened=5, sessions=1, rtt=[0.004, 0.004]))
    exposed = merged_files(path)
    assert sample(exposed["heartbeat_sessions_opened_total"], "_total") == 5
    assert sample(exposed["heartbeat_rtt_seconds"], "_count") == 2
    assert sample(exposed["heartbeat_rtt_seconds"], "_sum") == pytest.approx(0.008)
    a.sync(_snap(opened=1))  # an event loop went away: nothing goes back
    a.sync(_snap(opened=2))
    exposed = merged_files(path)
    assert sample(exposed["heartbeat_sessions_opened_total"], "_total") == 6


def test_a_dead_workers_gauges_go_its_counters_stay(multiproc):
    path, worker = multiproc
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = worker(subprocess.os.getpid())
    dead = worker(gone.pid)
    alive.sync(_snap(opened=1, sessions=1))
    dead.sync(_snap(opened=2, sessions=2))
    assert sample(merged_files(path)["heartbeat_sessions"]) == 3
    assert prometheus.forget_dead_workers(str(path)) == [gone.pid]
    exposed = merged_files(path)
    assert sample(exposed["heartbeat_sessions"]) == 1
    assert sample(exposed["heartbeat_sessions_opened_total"], "_total") == 3


async def test_a_scrape_in_multiprocess_mode_reads_every_workers_files(
        multiproc, own_runtimes, make_runtime):
    path, worker = multiproc
    worker(4242).sync(_snap(opened=10))  # another worker, alive or not
    rt = make_runtime()
    rt.metrics.opened.inc(2)
    values.ValueClass = values.MultiProcessValue()  # this process, as in a real worker
    body, _ = prometheus.exposition()
    exposed = parse(body)
    assert sample(exposed["heartbeat_sessions_opened_total"], "_total") == 12
    assert "python_gc_objects_collected" not in {f.name for f in exposed.values()}


def test_install_connects_the_mirror_only_in_multiprocess_mode(one_process):
    assert prometheus.install() is False


# The view -----------------------------------------------------------------------------

rf = AsyncRequestFactory()


class User:
    def __init__(self, staff: bool, active: bool = True):
        self.is_staff, self.is_active = staff, active


def get(address: str, user: User | None = None):
    request = rf.get("/metrics")
    request.META["REMOTE_ADDR"] = address  # what Django takes from the ASGI scope's client
    if user is not None:
        async def auser():
            return user
        request.auser = auser
    return request


@override_settings(HEARTBEAT_METRICS_ALLOWED_IPS=["127.0.0.1", "10.0.0.0/8", "::1"])
@pytest.mark.parametrize("address", ["127.0.0.1", "10.20.30.40", "::1", "::ffff:10.1.1.1"])
async def test_the_view_serves_allowed_addresses(counted, one_process, address):
    response = await views.metrics(get(address))
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    assert sample(parse(response.content)["heartbeat_zombies_total"], "_total") == 1


@override_settings(HEARTBEAT_METRICS_ALLOWED_IPS=["127.0.0.1", "10.0.0.0/8"])
@pytest.mark.parametrize("address", ["192.168.1.2", "11.0.0.1", "::2", "", "not-an-ip"])
async def test_the_view_refuses_other_addresses_with_403(address):
    response = await views.metrics(get(address))
    assert response.status_code == 403
    assert b"HEARTBEAT_METRICS_ALLOWED_IPS" in response.content


@override_settings(HEARTBEAT_METRICS_ALLOWED_IPS=[])
async def test_by_default_nobody_is_allowed_not_even_loopback():
    with override_settings():
        from django.conf import settings

        del settings.HEARTBEAT_METRICS_ALLOWED_IPS
        assert (await views.metrics(get("127.0.0.1"))).status_code == 403
    assert (await views.metrics(get("127.0.0.1"))).status_code == 403


@override_settings(HEARTBEAT_METRICS_ALLOWED_IPS=[], HEARTBEAT_METRICS_ALLOW_STAFF=True)
async def test_staff_may_read_when_the_setting_says_so(counted, one_process):
    assert (await views.metrics(get("192.0.2.1", User(staff=True)))).status_code == 200
    assert (await views.metrics(get("192.0.2.1", User(staff=False)))).status_code == 403
    assert (await views.metrics(get("192.0.2.1", User(True, active=False)))).status_code == 403
    assert (await views.metrics(get("192.0.2.1"))).status_code == 403  # no auth middleware


@override_settings(HEARTBEAT_METRICS_ALLOWED_IPS=[], HEARTBEAT_METRICS_ALLOW_STAFF=False)
async def test_staff_are_refused_unless_the_setting_says_so():
    assert (await views.metrics(get("192.0.2.1", User(staff=True)))).status_code == 403


@override_settings(HEARTBEAT_METRICS_ALLOWED_IPS=["127.0.0.1"])
async def test_without_prometheus_client_the_view_answers_503(monkeypatch):
    real = views.importlib.util.find_spec
    monkeypatch.setattr(views.importlib.util, "find_spec",
                        lambda name, *a: None if name == "prometheus_client" else real(name, *a))
    response = await views.metrics(get("127.0.0.1"))
    assert response.status_code == 503
    assert b"prometheus_client is not installed" in response.content


@override_settings(HEARTBEAT_METRICS_ALLOWED_IPS=["127.0.0.1"])
async def test_a_refused_client_learns_nothing_even_without_prometheus_client(monkeypatch):
    monkeypatch.setattr(views.importlib.util, "find_spec", lambda name, *a: None)
    assert (await views.metrics(get("192.0.2.1"))).status_code == 403


def test_the_snapshot_as_admin_rows():
    m = Metrics()
    m.rtt.observe(0.002)
    m.rtt.observe(0.004)
    m.closed.inc(reason="timeout")
    rows = {(r["name"], r["labels"]): r for r in views.snapshot_rows(m.registry.snapshot())}
    rtt = rows[("heartbeat_rtt_seconds", "")]
    assert rtt["value"] == 2 and rtt["mean"] == pytest.approx(0.003) and rtt["max"] == 0.004
    assert rows[("heartbeat_sessions_closed_total", "reason=timeout")]["value"] == 1


@pytest.mark.django_db
def test_the_admin_metrics_page_is_for_staff_only(client, django_user_model):
    assert client.get("/admin/heartbeat_app/metrics/").status_code == 302  # to the login
    staff = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    client.force_login(staff)
    response = client.get("/admin/heartbeat_app/metrics/")
    assert response.status_code == 200
    assert b"Heartbeat metrics of this process" in response.content


# The check ----------------------------------------------------------------------------


def ids(messages):
    return {message.id for message in messages}


def test_metrics_check_is_quiet_with_the_test_settings(one_process):
    assert check_metrics() == []


def test_w020_says_metrics_are_off_without_prometheus_client(monkeypatch, one_process):
    real = views.importlib.util.find_spec
    monkeypatch.setattr("heartbeat_app.checks.importlib.util.find_spec",
                        lambda name, *a: None if name == "prometheus_client" else real(name, *a))
    (message,) = check_metrics()
    assert message.id == "heartbeat_app.W020"
    assert "Metrics are off" in message.msg and "[metrics]" in message.hint


def test_w020_is_quiet_when_metrics_are_turned_off(monkeypatch, one_process):
    """Nobody needs prometheus_client for metrics they turned off."""
    monkeypatch.setattr("heartbeat_app.checks.importlib.util.find_spec", lambda name, *a: None)
    with override_settings(HEARTBEAT_METRICS=False):
        assert check_metrics() == []
    assert ids(check_metrics()) == {"heartbeat_app.W020"}


@pytest.mark.parametrize("value", ["no", 0, 1, None, "False"])
def test_e021_refuses_a_heartbeat_metrics_that_is_not_a_boolean(value, one_process):
    with override_settings(HEARTBEAT_METRICS=value):
        (message,) = check_metrics()
    assert message.id == "heartbeat_app.E021"
    assert "HEARTBEAT_METRICS" in message.msg and repr(value) in message.msg and message.hint


@pytest.mark.parametrize("allowed, staff", [
    ("127.0.0.1", False), (["localhost"], False), (["10.0.0.0/33"], False),
    (None, False), (["127.0.0.1"], "yes"),
])
def test_e020_refuses_bad_metrics_settings(allowed, staff, one_process):
    with override_settings(HEARTBEAT_METRICS_ALLOWED_IPS=allowed,
                           HEARTBEAT_METRICS_ALLOW_STAFF=staff):
        assert ids(check_metrics()) == {"heartbeat_app.E020"}


def test_w021_when_the_multiprocess_dir_is_not_a_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    assert ids(check_metrics()) == {"heartbeat_app.W021"}
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert check_metrics() == []


# The docs -----------------------------------------------------------------------------


def test_every_metric_is_documented_with_its_type_and_labels():
    from tests.servers import ROOT

    text = (ROOT / "docs" / "metrics.md").read_text()
    for name, metric in Metrics().registry.metrics.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")),
                   None)
        assert row is not None, f"{name} has no row in docs/metrics.md"
        cells = [cell.strip() for cell in row.split("|")]
        assert cells[2] == metric.kind, name
        assert cells[3] == " ".join(f"`{label}`" for label in metric.labels), name


def test_the_metrics_checks_are_documented():
    from tests.servers import ROOT

    text = (ROOT / "docs" / "settings.md").read_text()
    for check_id in ("W020", "E020", "E021", "W021"):
        assert f"| `heartbeat_app.{check_id}` |" in text


# HEARTBEAT_METRICS: counting on and off -----------------------------------------------


class PingConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """A heartbeat consumer with short timers, for counting pings, probes and round trips."""

    heartbeat_interval = 2.0
    heartbeat_timeout = 1.0


async def ping_probe_and_close(clock) -> tuple[object, object]:
    """Three pings, one probe answered after 250 ms, a close; the session and its runtime."""
    communicator = HeartbeatCommunicator(PingConsumer.as_asgi(), "/ws/count/", tab="tab-1")
    connected, _ = await communicator.connect()
    assert connected
    session = communicator.heartbeat_session
    for ident in range(3):
        await communicator.send_json_to({"type": "ping", "id": ident})
        pong = await communicator.receive_json_from()
        assert (pong["type"], pong["id"]) == ("pong", ident)
    await communicator.go_silent()
    await clock.advance(2.0)
    probe = await communicator.receive_json_from()
    await clock.advance(0.25)
    await communicator.resume()
    await communicator.send_json_to({"type": "pong", "id": probe["id"]})
    await communicator.go_silent()
    await asyncio.sleep(0.01)
    assert session.rtt == pytest.approx(0.25)  # the session's own RTT does not depend on metrics
    await communicator.disconnect()
    return session, runtime_module.get_runtime()


async def test_with_metrics_on_pings_probes_rtt_and_sessions_are_counted(
        own_runtimes, heartbeat_clock, one_process):
    _, rt = await ping_probe_and_close(heartbeat_clock)
    m = rt.metrics
    assert m.enabled is True
    assert m.pings.value() == 3
    assert m.probes.value() == 1 and m.ticks.value() >= 1
    assert m.rtt.count() == 1 and m.rtt.values[()]["sum"] == pytest.approx(0.25)
    assert m.opened.value() == 1 and m.sessions.value() == 0
    assert m.closed.value(reason=str(CloseReason.CLOSED)) == 1
    exposed = parse(prometheus.exposition()[0])
    assert sample(exposed["heartbeat_pings_total"], "_total") == 3
    assert sample(exposed["heartbeat_rtt_seconds"], "_count") == 1


@override_settings(HEARTBEAT_METRICS=False)
async def test_with_metrics_off_pings_are_answered_and_nothing_is_counted(
        own_runtimes, heartbeat_clock, one_process):
    session, rt = await ping_probe_and_close(heartbeat_clock)
    m = rt.metrics
    assert m.enabled is False
    assert isinstance(m.pings, NullCounter) and isinstance(m.rtt, NullHistogram)
    assert m.pings.value() == m.probes.value() == m.opened.value() == 0
    assert m.rtt.count() == 0 and m.sessions.value() == 0
    assert m.registry.metrics == {} and runtime_module.snapshot() == {}
    assert session.closed and session.close_reason == CloseReason.CLOSED


@override_settings(HEARTBEAT_METRICS=False)
async def test_with_metrics_off_a_scrape_says_so_and_has_no_heartbeat_series(
        own_runtimes, make_runtime, one_process):
    rt = make_runtime()
    rt.metrics.pings.inc(40)
    rt.metrics.closed.inc(reason="timeout")
    rt.metrics.rooms.set_function(lambda: 4)
    body, content_type = prometheus.exposition()
    assert content_type.startswith("text/plain")
    assert body.startswith(prometheus.OFF_NOTE)
    assert b"HEARTBEAT_METRICS = False" in body
    assert not [name for name in parse(body) if name.startswith("heartbeat_")]
    body, _ = prometheus.exposition("application/openmetrics-text; version=1.0.0")
    assert b"heartbeat_" not in body and body.rstrip().endswith(b"# EOF")


@override_settings(HEARTBEAT_METRICS=False, HEARTBEAT_METRICS_ALLOWED_IPS=["127.0.0.1"])
async def test_with_metrics_off_the_view_still_answers(own_runtimes, make_runtime, one_process):
    make_runtime()
    response = await views.metrics(get("127.0.0.1"))
    assert response.status_code == 200
    assert b"metrics are off" in response.content


@override_settings(HEARTBEAT_METRICS=False)
async def test_with_metrics_off_no_worker_mirrors_into_the_multiprocess_files(
        multiproc, own_runtimes, make_runtime):
    path, _ = multiproc
    rt = make_runtime()
    assert prometheus.install() is False
    prometheus.ensure_mirroring()
    assert rt.existing(prometheus.MirrorService) is None
    body, _ = prometheus.exposition()
    assert body.startswith(prometheus.OFF_NOTE)
    assert list(path.iterdir()) == []


def test_the_setting_is_read_when_metrics_are_made():
    """A runtime keeps the metrics it was made with; an explicit argument wins."""
    with override_settings(HEARTBEAT_METRICS=False):
        off, forced = Metrics(), Metrics(enabled=True)
    assert (off.enabled, forced.enabled, Metrics().enabled) == (False, True, True)
    off.pings.inc()
    forced.pings.inc()
    assert off.pings.value() == 0 and forced.pings.value() == 1
    assert set(prometheus.declared()) == set(Metrics().registry.metrics)


def test_null_metrics_take_every_call_the_real_ones_take():
    off = Metrics(enabled=False)
    for name, metric in Metrics(enabled=True).registry.metrics.items():
        null = next(m for m in vars(off).values() if getattr(m, "name", None) == name)
        assert (null.kind, null.labels) == (metric.kind, metric.labels)
    off.closed.inc(2, reason="timeout")
    off.store_seconds.observe(0.1, op="join")
    off.sessions.inc()
    off.sessions.dec(3)
    assert off.registry.snapshot() == {}


def test_the_fast_paths_still_refuse_wrong_labels():
    m = Metrics(enabled=True)
    for call in (lambda: m.pings.inc(reason="timeout"), lambda: m.closed.inc(),
                 lambda: m.closed.inc(why="rate"), lambda: m.rtt.observe(0.1, op="join"),
                 lambda: m.store_seconds.observe(0.1),
                 lambda: m.store_seconds.observe(0.1, op="join", extra="x")):
        with pytest.raises(ValueError, match="takes the labels"):
            call()
    assert m.registry.snapshot()["heartbeat_pings_total"]["values"] == {}


def test_an_unlabelled_series_appears_with_its_first_count():
    m = Metrics(enabled=True)
    snap = m.registry.snapshot()
    assert snap["heartbeat_pings_total"]["values"] == {}
    assert snap["heartbeat_rtt_seconds"]["values"] == {}
    m.pings.inc()
    m.pings.inc(2)
    m.rtt.observe(0.001)  # on a bound: counted in that bucket (le)
    m.rtt.observe(99.0)  # above the last bound: in the count only
    snap = m.registry.snapshot()
    assert snap["heartbeat_pings_total"]["values"] == {(): 3}
    rtt = snap["heartbeat_rtt_seconds"]["values"][()]
    assert rtt["buckets"][0] == (0.001, 1) and rtt["buckets"][-1] == (10.0, 1)
    assert (rtt["count"], rtt["sum"], rtt["max"]) == (2, pytest.approx(99.001), 99.0)
    assert m.rtt.count() == 2
