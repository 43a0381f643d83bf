"""Words that cross modules come from one place: close and leave reasons, and the Lua."""

import ast
import re
from pathlib import Path

import pytest

from heartbeat_app.protocol import CloseReason, LeaveReason
from heartbeat_app.stores import redis_scripts as redis_store

PACKAGE = Path(__file__).resolve().parent.parent / "heartbeat_app"
REASONS = {str(r) for r in CloseReason} | {str(r) for r in LeaveReason}
REASON_NAMES = {"reason", "close_reason"}


def _names(node) -> set[str]:
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Name):
        return {node.id}
    return set()


def reason_literals(tree) -> list[tuple[int, str]]:
    """String constants used where a reason goes: assigned, passed or compared as one."""
    found = []

    def check(value, line):
        # Only reason words: a close frame's human text ("heartbeat timeout") is not one.
        if isinstance(value, ast.Constant) and value.value in REASONS:
            found.append((line, value.value))

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in REASON_NAMES:
            check(node.value, node.value.lineno)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_names(t) & REASON_NAMES for t in targets):
                check(node.value, node.lineno)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_names(side) & REASON_NAMES for side in sides):
                for side in sides:
                    check(side, node.lineno)
        elif isinstance(node, ast.Call) and _names(node.func) & {"leave", "_remove"}:
            for arg in node.args:
                    check(arg, arg.lineno)
    return found


def test_no_reason_literal_outside_protocol():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "protocol.py" or "migrations" in path.parts:
            continue
        for line, value in reason_literals(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(PACKAGE)}:{line}: {value!r}")
    assert offenders == []


def test_the_reason_scan_finds_a_literal():
    """The scan above can fail: it sees each of the ways a reason is written."""
    source = (
        "session.close_reason = 'timeout'\n"
        "leave(room, session, reason='closed')\n"
        "if change.reason == 'expired': pass\n"
        "store.leave(room, session, 'update')\n"
    )
    assert sorted(value for _, value in reason_literals(ast.parse(source))) == [
        "closed", "expired", "timeout", "update"]


def test_lua_scripts_write_exactly_the_leave_reasons():
    literals = set()
    for source in redis_store.SCRIPTS.values():
        assert "@" not in source  # every placeholder filled in
        literals |= set(re.findall(r"'([a-z_]{2,})'", source))
    written = literals & REASONS
    # Every lowercase word literal in the scripts is a reason (keys and commands are not).
    assert literals == written
    assert written == {str(LeaveReason.UPDATE), str(LeaveReason.REPLACED),
                       str(LeaveReason.EXPIRED), str(LeaveReason.INSTANCE_LOST)}


def test_a_script_naming_an_unknown_reason_is_refused():
    assert redis_store.lua("return @EXPIRED@") == "return 'expired'"
    with pytest.raises(ValueError, match="LeaveReason"):
        redis_store.lua("return @VANISHED@")
