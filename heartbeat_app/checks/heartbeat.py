"""Checks of the heartbeat core's settings: timing, rate limit, GC, admission and drain."""

from __future__ import annotations

from django.core.checks import Error, Tags, Warning, register

from .. import collector, conf
from .values import is_count, is_seconds

# Below this a heartbeat costs real CPU per connection for no gain in production.
MIN_SENSIBLE_INTERVAL = 1.0
# The longest delay a browser timer holds (2**31 - 1 ms, about 24.8 days): setTimeout
# fires a longer one at once, so the client would ping in a tight loop.
MAX_TIMER_SECONDS = (2**31 - 1) / 1000
# Fewer young-generation allocations than this between collections: the collector
# runs almost all the time.
MIN_GC_THRESHOLD0 = 100


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs) -> list:
    """Validate the heartbeat core's HEARTBEAT_* settings."""
    errors: list = []
    interval = conf.get("HEARTBEAT_INTERVAL")
    timeout = conf.get("HEARTBEAT_TIMEOUT")
    tick = conf.get("HEARTBEAT_TICK")
    spread = conf.get("HEARTBEAT_PHASE_SPREAD")
    proxy = conf.get("HEARTBEAT_PROXY_IDLE_TIMEOUT")
    rate = conf.get("HEARTBEAT_RATE_LIMIT")
    burst = conf.get("HEARTBEAT_RATE_BURST")
    retry = conf.get("HEARTBEAT_RETRY_AFTER_MS")

    if not is_seconds(interval, allow_none=True):
        errors.append(Error(
            f"HEARTBEAT_INTERVAL must be a positive number of seconds or None, not {interval!r}.",
            hint="Use the default 25.0, or None to turn server probes off.",
            id="heartbeat_app.E001",
        ))
        interval = None
    if not is_seconds(timeout, allow_none=True):
        errors.append(Error(
            f"HEARTBEAT_TIMEOUT must be a positive number of seconds or None, not {timeout!r}.",
            hint="Use the default 10.0, or None to never close silent connections.",
            id="heartbeat_app.E002",
        ))
        timeout = None
    for name, value in (("HEARTBEAT_INTERVAL", interval), ("HEARTBEAT_TIMEOUT", timeout)):
        if value is not None and value > MAX_TIMER_SECONDS:
            errors.append(Error(
                f"{name} is {value!r} s, longer than a browser timer can wait "
                f"({MAX_TIMER_SECONDS:g} s, about 24.8 days): the client's timer would fire "
                "at once and it would ping in a tight loop.",
                hint="Use seconds to minutes: 25.0 and 10.0 by default.",
                id="heartbeat_app.E009",
            ))
    if not is_seconds(tick, allow_none=False) or tick > 1.0:
        errors.append(Error(
            f"HEARTBEAT_TICK must be a number of seconds above 0 and at most 1, not {tick!r}.",
            hint="The tick bounds how late a probe or a zombie close can be; use 1.0.",
            id="heartbeat_app.E003",
        ))
        tick = None
    if not is_seconds(spread, allow_none=True):
        errors.append(Error(
            f"HEARTBEAT_PHASE_SPREAD must be a positive number of seconds or None, not {spread!r}.",
            hint="Leave it unset to spread probes over a quarter of HEARTBEAT_TIMEOUT.",
            id="heartbeat_app.E004",
        ))
    if not is_seconds(proxy, allow_none=True):
        errors.append(Error(
            f"HEARTBEAT_PROXY_IDLE_TIMEOUT must be a positive number of seconds or None, "
            f"not {proxy!r}.",
            hint="Set it to the idle timeout of your proxy or load balancer "
                 "(nginx proxy_read_timeout, 60 s by default).",
            id="heartbeat_app.E005",
        ))
        proxy = None
    if not is_seconds(rate, allow_none=True) or (
        isinstance(burst, bool) or not isinstance(burst, int) or burst < 1
    ):
        errors.append(Error(
            "HEARTBEAT_RATE_LIMIT must be a positive number or None, and "
            f"HEARTBEAT_RATE_BURST a positive integer (got {rate!r} and {burst!r}).",
            hint="The defaults are 20.0 frames per second with a burst of 60.",
            id="heartbeat_app.E006",
        ))
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        errors.append(Error(
            f"HEARTBEAT_RETRY_AFTER_MS must be a non-negative integer, not {retry!r}.",
            hint="It is the hint, in milliseconds, sent with a 4429 close.",
            id="heartbeat_app.E007",
        ))

    gc_threshold = conf.get("HEARTBEAT_GC_THRESHOLD")
    by_hand = gc_threshold is not None and gc_threshold != collector.AUTO
    if by_hand and not (
        isinstance(gc_threshold, (tuple, list)) and 1 <= len(gc_threshold) <= 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in gc_threshold)
    ):
        errors.append(Error(
            f'HEARTBEAT_GC_THRESHOLD must be "auto", None or a tuple of one to three '
            f"non-negative integers, not {gc_threshold!r}.",
            hint='Leave the default "auto", or give the thresholds you measured, for example '
                 "(10000, 10, 10); see docs/deployment.md.",
            id="heartbeat_app.E008",
        ))
    elif by_hand and gc_threshold[0] < MIN_GC_THRESHOLD0:
        first = gc_threshold[0]
        why = ("its first value 0 turns automatic collection off, so reference cycles are "
               "never freed and memory grows" if first == 0 else
               f"its first value, {first} allocations between two young-generation "
               f"collections, is below {MIN_GC_THRESHOLD0}, so the collector would run "
               "almost all the time")
        errors.append(Error(
            f"HEARTBEAT_GC_THRESHOLD is {tuple(gc_threshold)!r}: {why}.",
            hint="A tuple is there to collect less often than Python's own (700, 10, 10), "
                 'for example (10000, 10, 10); "auto" (the default) does that for a server, '
                 "and None leaves Python's collector alone.",
            id="heartbeat_app.E014",
        ))
    errors += _check_restarts()
    if interval is not None and conf.get("HEARTBEAT_TIMEOUT") is None:
        errors.append(Warning(
            "HEARTBEAT_TIMEOUT is None: silent connections are probed but never closed, "
            "so zombies stay until the transport notices (about 52 s under Daphne).",
            hint="Set HEARTBEAT_TIMEOUT to a few seconds (10.0 by default).",
            id="heartbeat_app.W001",
        ))
    if tick is not None and timeout is not None and timeout < 4 * tick:
        errors.append(Warning(
            f"HEARTBEAT_TIMEOUT ({timeout} s) is shorter than four scheduler ticks "
            f"({tick} s each): zombies may be closed later than interval + timeout + 1 tick.",
            hint="Raise HEARTBEAT_TIMEOUT or lower HEARTBEAT_TICK.",
            id="heartbeat_app.W002",
        ))
    if interval is not None and interval < MIN_SENSIBLE_INTERVAL:
        errors.append(Warning(
            f"HEARTBEAT_INTERVAL is {interval} s: every connection will be probed more "
            "than once a second, which costs CPU for no gain in production.",
            hint="Use 10 to 30 seconds outside of tests.",
            id="heartbeat_app.W003",
        ))
    if proxy is not None and (interval is None or interval > 0.75 * proxy):
        shown = "off" if interval is None else f"{interval} s"
        errors.append(Warning(
            f"HEARTBEAT_INTERVAL ({shown}) is above 75 % of the proxy idle timeout "
            f"({proxy} s): the proxy may cut idle connections before a heartbeat crosses it.",
            hint=f"Set HEARTBEAT_INTERVAL to at most {0.75 * proxy:g} s, or raise the "
                 "proxy's idle timeout.",
            id="heartbeat_app.W004",
        ))
    errors += _check_inbound()
    return errors


def _check_inbound() -> list:
    """The budget of frames of every kind, and the inbox of frames waiting for handlers."""
    rate = conf.get("HEARTBEAT_MESSAGE_RATE")
    burst = conf.get("HEARTBEAT_MESSAGE_BURST")
    inbox = conf.get("HEARTBEAT_INBOX_MAX")
    if is_seconds(rate, allow_none=True) and is_count(burst, allow_none=False) and is_count(
            inbox, allow_none=False):
        return []
    return [Error(
        "HEARTBEAT_MESSAGE_RATE must be a positive number or None, HEARTBEAT_MESSAGE_BURST "
        f"and HEARTBEAT_INBOX_MAX positive integers (got {rate!r}, {burst!r}, {inbox!r}).",
        hint="The defaults are 50.0 frames a second, a burst of 200, and 500 frames waiting.",
        id="heartbeat_app.E015",
    )]


def _check_restarts() -> list:
    """The admission gate's and the drain's settings."""
    errors = []
    spread, grace = conf.get("HEARTBEAT_DRAIN_SPREAD"), conf.get("PRESENCE_LEAVE_GRACE")
    timeout = conf.get("HEARTBEAT_DRAIN_TIMEOUT")
    if (is_seconds(spread, allow_none=False) and is_seconds(grace, allow_none=False)
            and is_seconds(timeout, allow_none=False) and spread + grace + 2 > timeout):
        errors.append(Warning(
            f"HEARTBEAT_DRAIN_SPREAD ({spread} s) plus PRESENCE_LEAVE_GRACE ({grace} s) and "
            f"2 s for the closes is longer than HEARTBEAT_DRAIN_TIMEOUT ({timeout} s): the "
            "drain ends before the last drained tabs' presence has been kept for their hint "
            "and grace, and members that do not come back stay listed until the process "
            "is found lost.",
            hint="Lengthen HEARTBEAT_DRAIN_TIMEOUT (within what your process manager waits "
                 "after SIGTERM) or shorten the spread (the defaults: 2 s, 5 s and 20 s).",
            id="heartbeat_app.W013",
        ))
    cap = conf.get("HEARTBEAT_MAX_HANDSHAKES")
    rate = conf.get("HEARTBEAT_CONNECT_RATE")
    hold = conf.get("HEARTBEAT_HOLD_UNTIL_JOINED")
    if (not is_count(cap, allow_none=True) or not is_seconds(rate, allow_none=True)
            or not isinstance(hold, bool)):
        errors.append(Error(
            "HEARTBEAT_MAX_HANDSHAKES must be a positive integer or None, "
            "HEARTBEAT_CONNECT_RATE a positive number or None, and "
            "HEARTBEAT_HOLD_UNTIL_JOINED a boolean "
            f"(got {cap!r}, {rate!r} and {hold!r}).",
            hint="The defaults are 128 handshakes in flight, no rate limit and False.",
            id="heartbeat_app.E012",
        ))
    retry = conf.get("HEARTBEAT_RETRY_MIN_MS")
    drain_rate = conf.get("HEARTBEAT_DRAIN_RATE")
    on_sigterm = conf.get("HEARTBEAT_DRAIN_ON_SIGTERM")
    stop_listening = conf.get("HEARTBEAT_DRAIN_STOP_LISTENING")
    if not (is_count(retry, allow_none=False, minimum=0)
            and (spread == 0 or is_seconds(spread, allow_none=True))
            and is_seconds(timeout, allow_none=False) and isinstance(on_sigterm, bool)
            and is_seconds(drain_rate, allow_none=True) and isinstance(stop_listening, bool)):
        errors.append(Error(
            "HEARTBEAT_RETRY_MIN_MS must be a non-negative integer, HEARTBEAT_DRAIN_SPREAD "
            "non-negative seconds or None, HEARTBEAT_DRAIN_TIMEOUT positive seconds, "
            "HEARTBEAT_DRAIN_RATE a positive number or None, and HEARTBEAT_DRAIN_ON_SIGTERM "
            "and HEARTBEAT_DRAIN_STOP_LISTENING booleans (got "
            f"{retry!r}, {spread!r}, {timeout!r}, {drain_rate!r}, {on_sigterm!r}, "
            f"{stop_listening!r}).",
            hint="The defaults are 500, 2.0, 20.0, 300.0, True and True; see "
                 "docs/deployment.md.",
            id="heartbeat_app.E013",
        ))
    close_timeout = conf.get("HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT")
    if not is_seconds(close_timeout, allow_none=True):
        errors.append(Error(
            "HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT must be positive seconds or None "
            f"(got {close_timeout!r}).",
            hint="The default is 5.0; None leaves Daphne's own (1 s).",
            id="heartbeat_app.E016",
        ))
    pace = conf.get("HEARTBEAT_PACE_DAPHNE")
    if not isinstance(pace, bool):
        errors.append(Error(
            f"HEARTBEAT_PACE_DAPHNE must be True or False (got {pace!r}).",
            hint="The default is True: Daphne's passes over every connection, a slice at a "
                 "time (docs/deployment.md).",
            id="heartbeat_app.E017",
        ))
    return errors


