"""Daphne's passes over every connection, a slice at a time (heartbeat_app/daphne_pace.py).

The checks run on a stand-in for Daphne's Server (its ``connections`` dict and close
timeout); Daphne itself runs paced in every end-to-end test.
"""

import asyncio
import sys

import pytest
from daphne.server import Server

from heartbeat_app import daphne_pace


class Protocol:
    def __init__(self):
        self.timeouts_checked = 0
        self.exceptions = []

    def check_timeouts(self):
        self.timeouts_checked += 1

    def handle_exception(self, exception):
        self.exceptions.append(exception)


class FakeServer:
    application_close_timeout = 10

    def __init__(self, n, loop):
        self.connections = {Protocol(): {"application_instance": loop.create_future()}
                            for _ in range(n)}


async def test_every_connection_is_checked_once_in_ten_slices_and_no_slice_holds_more():
    server = FakeServer(95, asyncio.get_running_loop())
    protocols = list(server.connections)
    for _ in range(daphne_pace.SLICES):
        before = [p.timeouts_checked for p in protocols]
        daphne_pace.check_timeouts(server)
        assert sum(p.timeouts_checked for p in protocols) - sum(before) <= 10
    assert [p.timeouts_checked for p in protocols] == [1] * 95
    daphne_pace.check_timeouts(server)  # the next period starts a new pass
    assert sum(p.timeouts_checked for p in protocols) == 95 + 10


@pytest.fixture
def daphne_server():
    """Daphne's own Server, paced, with connections made as Daphne makes them."""
    paced_here = not daphne_pace._patched and daphne_pace.pace()
    server = Server(application=_application, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.connections = {}
    server.application_close_timeout = 10
    yield server
    if paced_here:
        daphne_pace.unpace()


async def _application(scope, receive, send):
    await scope["until"]


def _connect(server, loop):
    """A connection and its running application, through Daphne's create_application."""
    protocol, until = Protocol(), loop.create_future()
    server.connections[protocol] = {}
    server.create_application(protocol, {"type": "websocket", "until": until})
    return protocol, until


async def test_finished_and_disconnected_connections_are_reaped_as_daphne_does(daphne_server):
    loop = asyncio.get_running_loop()
    server = daphne_server
    conns = [_connect(server, loop) for _ in range(20)]
    await asyncio.sleep(0)  # the applications start
    (gone, gone_until), (failed, failed_until), (running, _) = conns[:3]
    gone_until.set_result(None)
    server.protocol_disconnected(gone)
    failed_until.set_exception(ValueError("boom"))
    server.protocol_disconnected(running)
    server.connections[running]["disconnected"] = 1.0  # long ago: cancelled, then reaped
    stuck = server.connections[running]["application_instance"]
    for _ in range(3):
        await asyncio.sleep(0)  # the applications finish; their done callbacks run
    daphne_pace.check_applications(server)  # one pass, not a sweep of every connection
    assert gone not in server.connections
    assert "application_instance" not in server.connections[failed]
    assert [str(e) for e in failed.exceptions] == ["boom"]
    assert stuck.cancelling(), "past Daphne's close timeout: cancelled"
    await asyncio.sleep(0)  # the cancelled application finishes
    assert stuck.cancelled()
    daphne_pace.check_applications(server)
    assert running not in server.connections and len(server.connections) == 18
    assert not daphne_pace.changed(server), "nothing left to check but the sweep"


async def test_open_connections_are_checked_only_by_the_slow_sweep(daphne_server, monkeypatch):
    loop = asyncio.get_running_loop()
    server = daphne_server
    conns = [_connect(server, loop) for _ in range(1000)]
    await asyncio.sleep(0)
    checked = []
    real = daphne_pace._check_application
    monkeypatch.setattr(daphne_pace, "_check_application",
                        lambda s, protocol, details: (checked.append(protocol),
                                                      real(s, protocol, details)))
    for _ in range(daphne_pace.SLICES):  # a second of Daphne's checker
        daphne_pace.check_applications(server)
    assert len(checked) == 1000 // 10, "a tenth of the connections a second, not all of them"
    # A change Daphne's hooks never saw (its fields set by hand) is found by the sweep.
    protocol, until = conns[-1]
    server.connections[protocol]["disconnected"] = 1.0
    until.set_result(None)
    await asyncio.sleep(0)
    slices = round(daphne_pace.SWEEP_PERIOD / daphne_pace.APPLICATION_PERIOD * daphne_pace.SLICES)
    for _ in range(slices):
        daphne_pace.check_applications(server)
    assert protocol not in server.connections and len(server.connections) == 999
    assert set(checked) == {p for p, _ in conns}, "every connection once in the sweep"


async def test_a_connection_gone_since_the_snapshot_is_skipped():
    server = FakeServer(10, asyncio.get_running_loop())
    daphne_pace.check_applications(server)  # the sweep's snapshot is taken
    for protocol in list(server.connections)[1:]:
        del server.connections[protocol]
    slices = round(daphne_pace.SWEEP_PERIOD / daphne_pace.APPLICATION_PERIOD * daphne_pace.SLICES)
    for _ in range(slices - 1):
        daphne_pace.check_applications(server)
    assert len(server.connections) == 1


def test_pace_patches_daphne_once_and_the_setting_turns_it_off(settings, monkeypatch):
    was_paced = bool(daphne_pace._patched)
    daphne_pace.unpace()
    try:
        settings.HEARTBEAT_PACE_DAPHNE = False
        assert daphne_pace.pace() is False
        assert Server.application_checker.__module__ == "daphne.server"
        settings.HEARTBEAT_PACE_DAPHNE = True
        assert daphne_pace.pace() is True
        assert Server.application_checker is daphne_pace._application_checker
        assert Server.timeout_checker is daphne_pace._timeout_checker
        assert Server.create_application is daphne_pace._create_application
        assert Server.protocol_disconnected is daphne_pace._protocol_disconnected
        assert daphne_pace.pace() is True, "once: a second call patches nothing again"
        daphne_pace.unpace()
        assert Server.timeout_checker.__module__ == "daphne.server"
        assert Server.create_application.__module__ == "daphne.server"
        assert Server.protocol_disconnected.__module__ == "daphne.server"
        # A process that never imported Daphne's server is not Daphne: nothing is imported.
        monkeypatch.delitem(sys.modules, "daphne.server")
        assert daphne_pace.pace() is False
        assert "daphne.server" not in sys.modules
    finally:
        monkeypatch.undo()
        daphne_pace.unpace()
        if was_paced:  # as the app's ready() left it
            daphne_pace.pace()
