"""What the package changes below the ASGI server: autobahn's per-connection debug text."""

import pprint

import pytest

from heartbeat_app import listeners


class Counted:
    """A value that counts how often it is turned into text."""

    calls = 0

    def __repr__(self):
        Counted.calls += 1
        return "counted"


@pytest.fixture
def wsp(monkeypatch):
    """autobahn's protocol module, its pformat and Timings put back after the test."""
    module = pytest.importorskip("autobahn.websocket.protocol")
    # As autobahn ships it, even if a session of an earlier test changed it already.
    monkeypatch.setattr(module, "pformat", pprint.pformat)
    monkeypatch.setattr(module.Timings, "__str__", module.Timings.__str__)
    monkeypatch.setitem(listeners._tuned, "pformat", False)
    return module


def test_autobahns_options_line_is_formatted_only_when_written(wsp):
    assert listeners.defer_autobahn_pformat()
    Counted.calls = 0
    value = wsp.pformat([("option", Counted())])
    assert Counted.calls == 0  # nothing formatted for a debug line that is not written
    text = str(value)
    assert text == pprint.pformat([("option", "x")]).replace("'x'", "counted")
    assert Counted.calls == 1
    assert f"{value}" == text and Counted.calls == 2  # as txaio formats a log line
    timings = wsp.Timings()
    timings.track("open")
    assert isinstance(str(timings), str) and "open" in str(timings)
    assert not listeners.defer_autobahn_pformat()  # once per process


def test_an_autobahn_that_changed_is_left_alone(wsp, monkeypatch):
    monkeypatch.setattr(wsp, "pformat", lambda value: "its own")
    assert not listeners.defer_autobahn_pformat()
    assert wsp.pformat(1) == "its own"
