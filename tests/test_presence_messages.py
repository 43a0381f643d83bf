"""Presence requests from clients, parsed without an event loop."""

import pytest

from heartbeat_app import presence_messages as pm
from heartbeat_app.protocol import ProtocolError


def test_a_valid_request_of_each_type():
    assert pm.parse_request_text('{"type":"join","room":"a"}') == pm.Request("join", "a")
    update = pm.parse_request_text('{"type":"presence_update","room":"a","state":{"s":1}}')
    assert update.state == {"s": 1}
    signal = pm.parse_request_text('{"type":"broadcast","room":"a","event":"typing"}')
    assert (signal.event, signal.data) == ("typing", None)


@pytest.mark.parametrize("text, code", [
    ('{"type":"join","room":"bad room"}', "invalid_message"),
    ('{"type":"join"', "invalid_json"),
    ('{"type":"presence_update","room":"a","state":[1]}', "invalid_state"),
    ('{"type":"broadcast","room":"a","event":"no spaces"}', "invalid_message"),
    ('{"type":"broadcast","room":"a","event":"e","data":"' + "x" * 5000 + '"}',
     "invalid_message"),
    ('{"type":"presence_update","room":"a","state":' + '{"a":' * 70 + "1" + "}" * 70 + "}",
     "invalid_message"),  # nesting refused before decoding
])
def test_a_bad_request_says_why(text, code):
    with pytest.raises(ProtocolError) as caught:
        pm.parse_request_text(text)
    assert caught.value.code == code


def test_text_of_the_app_is_not_a_request():
    assert pm.parse_request_text('{"type":"chat","text":"join me"}') is None
    assert pm.parse_request_text('say "type":"join" please') is None
