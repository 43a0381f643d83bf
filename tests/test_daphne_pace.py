"""Daphne's passes over every connection, a slice at a time (heartbeat_app/daphne_pace.py).

The checks run on a stand-in for Daphne's Server (its ``connections`` dict and close
timeout); Daphne itself runs paced in every end-to-end test.
"""

import asyncio
import sys

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


async def test_finished_and_disconnected_connections_are_reaped_as_daphne_does():
    loop = asyncio.get_running_loop()
    server = FakeServer(20, loop)
    gone, failed, running = list(server.connections)[:3]
    server.connections[gone]["application_instance"].set_result(None)
    server.connections[gone]["disconnected"] = 1.0
    server.connections[failed]["application_instance"].set_exception(ValueError("boom"))
    server.connections[running]["disconnected"] = 1.0  # long ago: cancelled, then reaped
    stuck = server.connections[running]["application_instance"]
    for _ in range(daphne_pace.SLICES):
        daphne_pace.check_applications(server)
    assert gone not in server.connections
    assert "application_instance" not in server.connections[failed]
    assert [str(e) for e in failed.exceptions] == ["boom"]
    assert stuck.cancelled()
    for _ in range(daphne_pace.SLICES):
        daphne_pace.check_applications(server)
    assert running not in server.connections and len(server.connections) == 18


async def test_a_connection_gone_since_the_snapshot_is_skipped():
    server = FakeServer(10, asyncio.get_running_loop())
    daphne_pace.check_applications(server)  # the pass's snapshot is taken
    for protocol in list(server.connections)[1:]:
        del server.connections[protocol]
    for _ in range(daphne_pace.SLICES - 1):
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
        assert daphne_pace.pace() is True, "once: a second call patches nothing again"
        daphne_pace.unpace()
        assert Server.timeout_checker.__module__ == "daphne.server"
        # A process that never imported Daphne's server is not Daphne: nothing is imported.
        monkeypatch.delitem(sys.modules, "daphne.server")
        assert daphne_pace.pace() is False
        assert "daphne.server" not in sys.modules
    finally:
        monkeypatch.undo()
        daphne_pace.unpace()
        if was_paced:  # as the app's ready() left it
            daphne_pace.pace()
