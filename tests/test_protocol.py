"""Wire protocol v1: close codes, close reasons, frame parsing and message builders.

Pure functions only: nothing here needs Django, a database or an event loop.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heartbeat_app import protocol
from heartbeat_app.protocol import (
    ERR_FRAME_TOO_LARGE,
    ERR_INVALID_JSON,
    ERR_INVALID_MESSAGE,
    MAX_HEARTBEAT_FRAME,
    MAX_ID_LENGTH,
    MAX_INT_ID,
    CloseCode,
    Heartbeat,
    ProtocolError,
    close_reason,
    parse_heartbeat_text,
    parse_retry_hint,
    should_reconnect,
    valid_tab_id,
)

ERROR_CODES = {value for name, value in vars(protocol).items() if name.startswith("ERR_")}
PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow],
)


def error_code(text: str) -> str:
    """The ProtocolError code parse_heartbeat_text raises for ``text`` (fails if none)."""
    with pytest.raises(ProtocolError) as info:
        parse_heartbeat_text(text)
    return info.value.code


def padded(message: dict, length: int) -> str:
    """``message`` as JSON with a "pad" member making the text exactly ``length`` chars."""
    bare = json.dumps({**message, "pad": ""}, separators=(",", ":"))
    text = json.dumps({**message, "pad": "x" * (length - len(bare))}, separators=(",", ":"))
    assert len(text) == length
    return text


# Close codes ----------------------------------------------------------------------------


def test_close_codes_have_their_documented_values():
    assert {code.name: int(code) for code in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "ABNORMAL": 1006,
        "POLICY_VIOLATION": 1008,
        "INTERNAL_ERROR": 1011,
        "SERVICE_RESTART": 1012,
        "TRY_AGAIN_LATER": 1013,
        "SERVER_CLOSE": 4000,
        "DRAINING": 4001,
        "SERVER_BUSY": 4013,
        "PROTOCOL_ERROR": 4400,
        "UNAUTHENTICATED": 4401,
        "FORBIDDEN": 4403,
        "HEARTBEAT_TIMEOUT": 4408,
        "TOO_MANY_MESSAGES": 4429,
    }


@pytest.mark.parametrize("code", [1008, 4400, 4401, 4403])
def test_terminal_codes_are_not_reconnected(code):
    assert CloseCode(code).reconnect is False
    assert should_reconnect(code) is False


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 1012, 1013, 4000, 4001, 4013, 4408, 4429])
def test_other_known_codes_are_reconnected(code):
    assert CloseCode(code).reconnect is True
    assert should_reconnect(code) is True


@pytest.mark.parametrize("code", [4500, 4501, 4600, 4999])
def test_unknown_codes_4500_to_4999_are_terminal(code):
    assert should_reconnect(code) is False


@pytest.mark.parametrize("code", [4002, 4100, 4404, 4499])
def test_unknown_codes_4000_to_4499_are_reconnected(code):
    assert should_reconnect(code) is True


@pytest.mark.parametrize("code", [1002, 1015, 3000, 3999, 5000])
def test_other_unknown_codes_are_reconnected(code):
    assert should_reconnect(code) is True


def test_no_close_code_at_all_is_reconnected():
    assert should_reconnect(None) is True


def test_every_close_code_has_its_own_description():
    descriptions = [code.description for code in CloseCode]
    assert all(isinstance(text, str) and text.strip() for text in descriptions)
    assert len(set(descriptions)) == len(CloseCode)
    assert CloseCode.HEARTBEAT_TIMEOUT.description.startswith("heartbeat timeout")


# Close reasons and retry hints ------------------------------------------------------------


def test_close_reason_without_hint_is_the_text():
    assert close_reason("going away") == "going away"


def test_close_reason_appends_the_retry_hint_in_milliseconds():
    assert close_reason("too many messages", 5000) == "too many messages; retry_after_ms=5000"
    assert close_reason("slow down", 1500.9) == "slow down; retry_after_ms=1500"


def test_close_reason_is_truncated_to_123_bytes():
    reason = close_reason("x" * 300)
    assert reason == "x" * 123


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_close_reason_truncation_never_splits_a_multibyte_character(char):
    text = char * 100
    reason = close_reason(text)
    encoded = reason.encode()
    assert len(encoded) <= 123
    assert len(encoded) > 123 - len(char.encode())  # only the split character is dropped
    assert text.startswith(reason)
    assert reason.encode().decode() == reason


@PROPERTY_SETTINGS
@given(st.text(max_size=200), st.none() | st.integers(min_value=0, max_value=10**9))
def test_close_reason_always_fits_in_123_bytes_and_is_a_prefix(text, retry):
    reason = close_reason(text, retry)
    full = text if retry is None else f"{text}; retry_after_ms={retry}"
    assert len(reason.encode()) <= 123
    assert full.startswith(reason)


@pytest.mark.parametrize("retry", [0, 1, 250, 5000, 120_000])
def test_retry_hint_round_trips_through_a_close_reason(retry):
    assert parse_retry_hint(close_reason("too many messages", retry)) == retry


def test_retry_hint_survives_when_the_text_is_long():
    """A long text is cut, never the hint: the 123-byte limit must not turn 5000 into 50."""
    reason = close_reason("x" * 104, retry_after_ms=5000)
    assert len(reason.encode()) <= 123
    assert parse_retry_hint(reason) == 5000, f"hint mangled by truncation: {reason[-24:]!r}"


@pytest.mark.parametrize("reason", [None, "", "going away", "retry_after_ms=", "retry=5"])
def test_parse_retry_hint_without_a_hint_is_none(reason):
    assert parse_retry_hint(reason) is None


def test_parse_retry_hint_finds_the_hint_anywhere():
    assert parse_retry_hint("retry_after_ms=42") == 42
    assert parse_retry_hint("busy; retry_after_ms=7000; bye") == 7000


# parse_heartbeat_text: valid frames ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"ping","id":"abc"}', Heartbeat("ping", "abc", None)),
        ('{"type":"ping","id":7}', Heartbeat("ping", 7, None)),
        ('{"type":"ping","id":0}', Heartbeat("ping", 0, None)),
        ('{"type":"ping"}', Heartbeat("ping", None, None)),
        ('{"type":"ping","id":null}', Heartbeat("ping", None, None)),
        ('{"type":"ping","visible":true}', Heartbeat("ping", None, True)),
        ('{"type":"ping","id":"a","visible":false}', Heartbeat("ping", "a", False)),
        ('{"type":"ping","visible":null}', Heartbeat("ping", None, None)),
        ('{"type":"pong","id":"s1"}', Heartbeat("pong", "s1", None)),
        ('{"type":"pong","id":3,"visible":true}', Heartbeat("pong", 3, True)),
        ('{ "type" : "ping" , "extra": [1, {"a": 2}] }', Heartbeat("ping", None, None)),
    ],
)
def test_valid_heartbeats_are_parsed(text, expected):
    beat = parse_heartbeat_text(text)
    assert beat == expected
    assert type(beat.id) is type(expected.id)


def test_id_limits_are_inclusive():
    assert parse_heartbeat_text(json.dumps({"type": "ping", "id": "x" * MAX_ID_LENGTH})).id == (
        "x" * MAX_ID_LENGTH
    )
    assert parse_heartbeat_text(json.dumps({"type": "ping", "id": MAX_INT_ID})).id == MAX_INT_ID
    assert parse_heartbeat_text(json.dumps({"type": "ping", "id": -MAX_INT_ID})).id == -MAX_INT_ID


def test_frame_of_exactly_the_size_limit_is_accepted():
    text = padded({"type": "ping", "id": 1}, MAX_HEARTBEAT_FRAME)
    assert parse_heartbeat_text(text) == Heartbeat("ping", 1, None)


# parse_heartbeat_text: refused frames ----------------------------------------------------


@pytest.mark.parametrize("text", ['{"type":"pong"}', '{"type":"pong","id":null}'])
def test_pong_without_id_is_an_invalid_message(text):
    assert error_code(text) == ERR_INVALID_MESSAGE


@pytest.mark.parametrize("ident", ["true", "false", "1.5", "1.0", "[1]", '{"a":1}', "[]", "{}"])
def test_id_that_is_not_a_string_or_integer_is_an_invalid_message(ident):
    assert error_code(f'{{"type":"ping","id":{ident}}}') == ERR_INVALID_MESSAGE
    assert error_code(f'{{"type":"pong","id":{ident}}}') == ERR_INVALID_MESSAGE


@pytest.mark.parametrize(
    "ident", ["x" * (MAX_ID_LENGTH + 1), MAX_INT_ID + 1, -(MAX_INT_ID + 1), 2**64]
)
def test_id_beyond_the_limits_is_an_invalid_message(ident):
    assert error_code(json.dumps({"type": "ping", "id": ident})) == ERR_INVALID_MESSAGE


@pytest.mark.parametrize("visible", ['"yes"', '"true"', "1", "0", "[]", "{}", "1.0"])
def test_visible_that_is_not_a_boolean_is_an_invalid_message(visible):
    assert error_code(f'{{"type":"ping","visible":{visible}}}') == ERR_INVALID_MESSAGE


@pytest.mark.parametrize(
    "text", ['{"type":"ping",', '{"type":"ping"', '{"type":"pong","id":}', ' {"type":"ping"]']
)
def test_broken_json_shaped_like_an_object_is_invalid_json(text):
    assert error_code(text) == ERR_INVALID_JSON


def test_deep_nesting_within_the_size_limit_is_refused_before_decoding():
    """The same answer on every Python: 3.13's json parses nesting that 3.11 refuses."""
    text = '{"type":"ping","x":' + "[" * 2000 + "]" * 2000 + "}"
    assert len(text) <= MAX_HEARTBEAT_FRAME
    assert error_code(text) == ERR_INVALID_MESSAGE


@pytest.mark.parametrize("kind", ["ping", "pong"])
def test_oversize_heartbeat_is_frame_too_large(kind):
    text = padded({"type": kind, "id": 1}, MAX_HEARTBEAT_FRAME + 1)
    assert error_code(text) == ERR_FRAME_TOO_LARGE


def test_oversize_user_frame_with_a_nested_ping_passes_through():
    text = json.dumps({"type": "chat", "body": {"type": "ping"}, "pad": "x" * 5000})
    assert len(text) > MAX_HEARTBEAT_FRAME
    assert parse_heartbeat_text(text) is None


def test_hostile_deep_nesting_is_refused_without_crashing():
    """An oversize frame that opens as a ping is refused without being decoded."""
    text = '{"type":"ping","x":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ProtocolError) as caught:
        parse_heartbeat_text(text)
    assert caught.value.code == "frame_too_large"


@pytest.mark.parametrize(
    "text",
    [
        'hello "type":"ping" world',
        '  "type": "ping"',
        '["type":"ping"',
        'ping {"type":"ping"}',
    ],
)
def test_non_json_text_mentioning_a_ping_that_is_not_an_object_passes_through(text):
    assert parse_heartbeat_text(text) is None


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"chat","text":"hi"}',
        '{"type":"chat","body":{"type":"ping"}}',
        '{"kind":"ping"}',
        '{"type":"PING"}',
        '{"type":"pingx"}',
        '[{"type":"ping"}]',
        '["ping","pong"]',
        "[]",
        "42",
        '"ping"',
        "",
        "not json at all",
    ],
)
def test_user_frames_and_arrays_are_not_heartbeats(text):
    assert parse_heartbeat_text(text) is None


@pytest.mark.parametrize(
    "text",
    [
        '{"type": [], "data": {"type": "ping"}}',
        '{"type": {"a": 1}, "data": [{"type": "pong"}]}',
        json.dumps({"type": ["x"], "data": {"type": "ping"}, "pad": "x" * 5000}),
    ],
)
def test_user_frame_with_a_non_string_type_and_a_nested_ping_is_not_a_crash(text):
    """A frame whose "type" is a list or object is the user's, never a TypeError."""
    try:
        result = parse_heartbeat_text(text)
    except ProtocolError as error:  # refusing it would be acceptable too
        assert error.code in ERROR_CODES
    except Exception as error:
        pytest.fail(f"parse_heartbeat_text raised {error!r} for a user frame")
    else:
        assert result is None


# Errors, tab ids and message builders ----------------------------------------------------


def test_protocol_error_message_shape():
    error = ProtocolError(ERR_INVALID_JSON, "The frame is not valid JSON.")
    assert isinstance(error, ValueError)
    assert str(error) == "The frame is not valid JSON."
    assert error.as_message() == {
        "type": "error",
        "code": "invalid_json",
        "detail": "The frame is not valid JSON.",
    }


def test_error_codes_are_the_documented_slugs():
    assert ERROR_CODES == {
        "invalid_json",
        "invalid_message",
        "frame_too_large",
        "binary_not_supported",
        "room_forbidden",
    }


@pytest.mark.parametrize("tab", ["a", "abc-DEF_123", "x" * 64, "-", "_"])
def test_valid_tab_ids(tab):
    assert valid_tab_id(tab) is True


@pytest.mark.parametrize(
    "tab", ["", "x" * 65, "a b", "a/b", "a.b", "é", "tab=1", None, 123, b"abc", ["abc"]]
)
def test_invalid_tab_ids(tab):
    assert valid_tab_id(tab) is False


def test_tab_id_with_a_trailing_newline_is_invalid():
    """A tab id with a trailing newline (``?tab=abc%0A``) is refused."""
    assert valid_tab_id("abc\n") is False


def test_hello_shape():
    assert protocol.hello("sess", "tab1", 25000, 10000, 1234) == {
        "type": "hello",
        "session": "sess",
        "tab": "tab1",
        "interval_ms": 25000,
        "timeout_ms": 10000,
        "server_time": 1234,
        "version": protocol.PROTOCOL_VERSION,
    }
    assert protocol.hello("s", "t", None, None, 0)["interval_ms"] is None


def test_pong_echoes_the_id_only_when_there_is_one():
    assert protocol.pong("p1", 99) == {"type": "pong", "server_time": 99, "id": "p1"}
    assert protocol.pong(0, 99) == {"type": "pong", "server_time": 99, "id": 0}
    assert protocol.pong(None, 99) == {"type": "pong", "server_time": 99}


def test_probe_shape():
    assert protocol.probe("s3") == {"type": "ping", "id": "s3"}


def test_close_notice_shape():
    notice = protocol.close_notice(CloseCode.TOO_MANY_MESSAGES, "too many messages", 5000)
    assert notice == {
        "type": "close",
        "code": 4429,
        "reason": "too many messages",
        "retry_after_ms": 5000,
    }
    assert type(notice["code"]) is int  # not the IntEnum: some servers refuse subclasses
    assert protocol.close_notice(4000, "bye") == {"type": "close", "code": 4000, "reason": "bye"}


def test_dumps_is_compact_json():
    message = {"type": "pong", "id": "a", "list": [1, 2]}
    assert protocol.dumps(message) == '{"type":"pong","id":"a","list":[1,2]}'
    assert json.loads(protocol.dumps(message)) == message


def test_built_messages_parse_back():
    assert parse_heartbeat_text(protocol.dumps(protocol.probe("s1"))) == Heartbeat("ping", "s1")
    assert parse_heartbeat_text(protocol.dumps(protocol.pong("s1", 5))) == Heartbeat("pong", "s1")


# Property tests ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)
ids = (
    st.text(max_size=MAX_ID_LENGTH + 10)
    | st.integers(min_value=-(2**54), max_value=2**54)
    | st.sampled_from([MAX_INT_ID, MAX_INT_ID + 1, -MAX_INT_ID, -MAX_INT_ID - 1])
    | json_values
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["ping", "pong", "other"])},
    optional={
        "id": ids,
        "visible": st.booleans() | json_values,
        "data": json_values,
        "pad": st.text(max_size=5000),
    },
)
# Text likely to look like a heartbeat, so the parser itself (not the pre-filter) is fuzzed.
fragments = st.sampled_from(
    "{ } [ ] , : 1 -1.5e3 true null".split()
    + [" ", '"x"', '"\\u0070"', "\\", '"id":', '"visible":', '"type":']
    + ['"type":"ping"', '"type": "pong"']
)
heartbeatish_text = st.lists(fragments | st.text(max_size=4), max_size=30).map("".join)


def expected_outcome(message: dict, text: str):
    """What the protocol says parsing ``text`` (the JSON of ``message``) must give."""
    kind = message["type"]
    if kind not in ("ping", "pong"):
        return None
    if len(text) > MAX_HEARTBEAT_FRAME:
        return ERR_FRAME_TOO_LARGE
    ident, visible = message.get("id"), message.get("visible")
    if ident is None:
        if kind == "pong":
            return ERR_INVALID_MESSAGE
    elif isinstance(ident, bool) or not isinstance(ident, (str, int)):
        return ERR_INVALID_MESSAGE
    elif isinstance(ident, str) and len(ident) > MAX_ID_LENGTH:
        return ERR_INVALID_MESSAGE
    elif isinstance(ident, int) and abs(ident) > MAX_INT_ID:
        return ERR_INVALID_MESSAGE
    if visible is not None and not isinstance(visible, bool):
        return ERR_INVALID_MESSAGE
    return Heartbeat(kind, ident, visible)


def outcome(text: str):
    """None, a Heartbeat, or the code of the ProtocolError; any other exception propagates."""
    try:
        return parse_heartbeat_text(text)
    except ProtocolError as error:
        message = error.as_message()
        assert message["type"] == "error"
        assert message["code"] in ERROR_CODES
        assert isinstance(message["detail"], str) and message["detail"]
        return message["code"]


@PROPERTY_SETTINGS
@given(frames)
def test_parsing_a_json_object_gives_the_protocol_outcome(message):
    text = json.dumps(message)
    result = outcome(text)
    assert result == expected_outcome(message, text)
    if isinstance(result, Heartbeat):
        assert (result.type, result.id, result.visible) == (
            message["type"],
            message.get("id"),
            message.get("visible"),
        )
        assert type(result.id) is type(message.get("id"))


@PROPERTY_SETTINGS
@given(json_values)
def test_parsing_any_json_value_never_raises_anything_but_protocol_error(value):
    result = outcome(json.dumps(value))
    assert result is None or isinstance(result, Heartbeat) or result in ERROR_CODES
    if not isinstance(value, dict):
        assert result is None


@PROPERTY_SETTINGS
@given(st.text() | heartbeatish_text)
def test_parsing_any_text_never_raises_anything_but_protocol_error(text):
    result = outcome(text)
    assert result is None or isinstance(result, Heartbeat) or result in ERROR_CODES
    if not protocol.looks_like_heartbeat(text):
        assert result is None


# Presence messages -------------------------------------------------------------------------


def test_presence_messages_carry_only_what_clients_may_see():
    meta = {"session": "s1", "key": "7", "tab": "t", "ref": "r1", "channel": "specific.x!y",
            "instance": "host:1:ab", "visible": True}
    public = protocol.public_members({"7": {"metas": [meta]}})
    # No private field, and no tab id another client could replay.
    assert public == {"7": {"metas": [{"session": "s1", "key": "7", "ref": "r1",
                                       "visible": True}]}}
    assert protocol.presence_state("lobby", public) == {
        "type": "presence_state", "room": "lobby", "members": public, "count": 1}
    assert protocol.presence_state("big", None, 5000) == {
        "type": "presence_state", "room": "big", "count": 5000}
    assert protocol.presence_diff("lobby", public, {}) == {
        "type": "presence_diff", "room": "lobby", "joins": public, "leaves": {}}


def test_diffs_carry_their_place_in_a_sequence_and_states_where_each_sequence_is():
    """Optional fields of protocol v1: a diff's seq and origin, a state's seqs."""
    assert protocol.presence_diff("lobby", {}, {}, 7, "q1Xz0-Ab") == {
        "type": "presence_diff", "room": "lobby", "joins": {}, "leaves": {}, "seq": 7,
        "origin": "q1Xz0-Ab"}
    # Half a place is no place: a diff without its origin goes without a seq.
    assert "seq" not in protocol.presence_diff("lobby", {}, {}, 7, None)
    assert protocol.presence_state("lobby", {}, seqs={"q1Xz0-Ab": 6}) == {
        "type": "presence_state", "room": "lobby", "members": {}, "count": 0,
        "seqs": {"q1Xz0-Ab": 6}}
    assert protocol.PROTOCOL_VERSION == 1


def test_reasons_are_their_wire_strings():
    assert protocol.CloseReason.TRANSPORT_LOST == "transport_lost"
    assert protocol.LeaveReason.INSTANCE_LOST == "instance_lost"
    assert protocol.dumps({"reason": protocol.LeaveReason.TIMEOUT}) == '{"reason":"timeout"}'


def test_a_ping_may_report_the_round_trip_its_client_measured():
    assert protocol.parse_heartbeat({"type": "ping", "id": 3, "rtt_ms": 12.5}).rtt_ms == 12.5
    assert protocol.parse_heartbeat({"type": "ping", "id": 3}).rtt_ms is None
    for bad in (-1, "12", True, 10**9):
        with pytest.raises(ProtocolError):
            protocol.parse_heartbeat({"type": "ping", "id": 3, "rtt_ms": bad})


def test_an_encoded_message_is_the_message_and_is_not_encoded_again(monkeypatch):
    state = protocol.presence_state("lobby", [{"key": "k1", "visible": True}], seqs={"o": 3})
    encoded = protocol.Encoded(state)
    assert encoded == state and encoded.text == protocol.dumps(state)
    calls = []
    monkeypatch.setattr(protocol.json, "dumps", lambda *a, **k: calls.append(a) or "")
    assert protocol.dumps(encoded) == encoded.text and calls == []
