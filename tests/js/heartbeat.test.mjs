// Unit tests of heartbeat.js: a fake clock, a fake WebSocket and a fake page; no real time passes.
import { test, describe, mock } from "node:test";
import assert from "node:assert/strict";

import { HeartbeatSocket, FakeClock, fakeStorage, fakeWebSocketClass, fakePage, setup } from "./fakes.mjs";

const { backoff, shouldReconnect, retryHint, DEFAULTS } = HeartbeatSocket;

describe("connecting", () => {
  test("a path becomes a ws:// URL on the page's host, with the tab id and an empty anon", () => {
    const { ws, sock } = setup();
    assert.match(sock.tab, /^[A-Za-z0-9_-]{16}$/);
    // An empty `anon` asks for a token: the client keeps one (docs/protocol.md#identity).
    assert.equal(ws().url, `ws://example.test/ws/rooms/lobby/?tab=${sock.tab}&anon=`);
  });

  test("an https page connects with wss://, and an existing query string is kept", () => {
    const { ws, sock } = setup({ url: "/ws/x/?a=1" }, { protocol: "https:" });
    assert.equal(ws().url, `wss://example.test/ws/x/?a=1&tab=${sock.tab}&anon=`);
  });

  test("the tab id is kept in sessionStorage, so a reload reuses it", () => {
    const storage = fakeStorage();
    const first = setup({ storage });
    first.page.fire("window", "pagehide", { persisted: false });  // the reload unloads it
    const second = setup({ storage });
    assert.equal(second.sock.tab, first.sock.tab);
    assert.equal(storage.data["heartbeat_app.tab"], first.sock.tab);
    assert.equal(storage.data["heartbeat_app.tab.live"], "1");
  });

  test("a duplicated tab (sessionStorage copied while the original is open) gets its own id", () => {
    const storage = fakeStorage();
    const original = setup({ storage });
    const copy = setup({ storage: fakeStorage({ ...storage.data }), random: () => 0.1 });
    assert.notEqual(copy.sock.tab, original.sock.tab);
    assert.match(copy.sock.tab, /^[A-Za-z0-9_-]{16}$/);
  });

  test("two sockets of the same page share its tab id", () => {
    const storage = fakeStorage();
    const first = setup({ storage });
    const second = new HeartbeatSocket("/ws/rooms/other/", {
      WebSocket: fakeWebSocketClass(), window: first.page.window,
      document: first.page.document, storage, random: () => 0.1,
      now: () => 0, setTimeout: () => 0, clearTimeout: () => {},
    });
    assert.equal(second.tab, first.sock.tab);
  });

  test("the tab in hello is adopted and saved", () => {
    const { sock, open, storage, ws, clock } = setup();
    open({ tab: "server-made_1" });
    assert.equal(sock.tab, "server-made_1");
    assert.equal(storage.data["heartbeat_app.tab"], "server-made_1");
    ws().serverClose(1012);
    clock.tick(1000);
    assert.match(ws().url, /\?tab=server-made_1&anon=$/);
  });

  test("a blocked sessionStorage is survived", () => {
    const storage = { getItem() { throw new Error("SecurityError"); }, setItem() { throw new Error("SecurityError"); } };
    const { sock, ws } = setup({ storage });
    assert.match(sock.tab, /^[A-Za-z0-9_-]{16}$/);
    assert.ok(ws());
  });

  test("tab: false sends no tab id; anonKey: null asks for no token", () => {
    assert.equal(setup({ tab: false }).ws().url, "ws://example.test/ws/rooms/lobby/?anon=");
    assert.equal(setup({ tab: false, anonKey: null }).ws().url, "ws://example.test/ws/rooms/lobby/");
  });

  test("the anonymous token of identity is kept in sessionStorage and presented on connect", () => {
    const storage = fakeStorage();
    const { sock, ws, open } = setup({ storage });
    assert.equal(ws().url, `ws://example.test/ws/rooms/lobby/?tab=${sock.tab}&anon=`);
    assert.equal(sock.memberKey, null);
    const w = open();
    w.serverSend({ type: "identity", key: "anon:Qx3", token: "Qx3:s1g/n+d" });
    assert.equal(sock.memberKey, "anon:Qx3");
    assert.equal(storage.data["heartbeat_app.anon"], "Qx3:s1g/n+d");
    // The next connection of this socket, and a reload of the page, present it.
    sock.reconnect();
    assert.equal(ws().url, `ws://example.test/ws/rooms/lobby/?tab=${sock.tab}&anon=Qx3%3As1g%2Fn%2Bd`);
    storage.data["heartbeat_app.tab.live"] = "0";   // the page went away (pagehide)
    const reloaded = setup({ storage });
    assert.equal(reloaded.ws().url, `ws://example.test/ws/rooms/lobby/?tab=${sock.tab}&anon=Qx3%3As1g%2Fn%2Bd`);
  });

  test("identity is not a message event; a blocked sessionStorage keeps the token in memory", () => {
    const storage = { getItem() { throw new Error("SecurityError"); }, setItem() { throw new Error("SecurityError"); } };
    const { sock, ws, open, of } = setup({ storage });
    open().serverSend({ type: "identity", key: "anon:k", token: "k:sig" });
    assert.equal(of("message").length, 0);
    sock.reconnect();
    assert.match(ws().url, /&anon=k%3Asig$/);
  });

  test("state is connecting until hello, then open; open carries the session settings", () => {
    const { sock, open, of } = setup();
    assert.equal(sock.state, "connecting");
    open({ interval_ms: 1000, timeout_ms: 500 });
    assert.equal(sock.state, "open");
    assert.deepEqual(of("state").map((e) => e.state), ["open"]);
    const [ev] = of("open");
    assert.equal(ev.interval, 1000);
    assert.equal(ev.timeout, 500);
    assert.equal(ev.session, "a".repeat(32));
  });

  test("autoConnect: false waits for connect()", () => {
    const { sock, WS } = setup({ autoConnect: false });
    assert.equal(WS.instances.length, 0);
    assert.equal(sock.state, "closed");
    sock.connect();
    assert.equal(WS.instances.length, 1);
    assert.equal(sock.state, "connecting");
  });

  test("connect timeout: no hello in time abandons the socket and retries", () => {
    const { ws, clock, WS, of } = setup({ connectTimeout: 3000 });
    const first = ws();
    clock.tick(2999);
    assert.equal(WS.instances.length, 1);
    clock.tick(1);
    assert.deepEqual(first.closeCalls.length, 1, "the pending socket is closed, not leaked");
    assert.equal(first.onclose, null, "its events are ignored");
    assert.equal(of("close")[0].reason, "connect timeout");
    clock.tick(1000);
    assert.equal(WS.instances.length, 2);
  });

  test("an open socket without hello also times out", () => {
    const { ws, clock, WS } = setup({ connectTimeout: 3000 });
    ws().serverOpen();
    clock.tick(3000);
    clock.tick(1000);
    assert.equal(WS.instances.length, 2);
  });
});

describe("heartbeat", () => {
  test("the first ping goes out right after hello, with visibility", () => {
    const { open, ws } = setup();
    open();
    assert.deepEqual(ws().pings(), [{ type: "ping", id: 1, visible: true }]);
  });

  test("the next ping is scheduled from the pong, one interval later", () => {
    const { open, ws, clock, pong, of } = setup();
    const w = open({ interval_ms: 1000, timeout_ms: 500 });
    clock.tick(40);
    pong();
    assert.equal(of("pong")[0].rtt, 40);
    clock.tick(999);
    assert.equal(w.pings().length, 1);
    clock.tick(1);
    assert.equal(w.pings().length, 2);
  });

  test("follows the hello's interval and timeout: dead at interval + timeout after the last pong", () => {
    const { open, ws, clock, pong, WS, of } = setup();
    const w = open({ interval_ms: 1000, timeout_ms: 500 });
    pong();
    clock.tick(1499);
    assert.equal(of("close").length, 0);
    clock.tick(1);
    assert.deepEqual(w.closeCalls, [[4408, "heartbeat timeout"]]);
    const [close] = of("close");
    assert.equal(close.code, 4408);
    assert.equal(close.willReconnect, true);
    assert.equal(WS.instances.length, 1);
  });

  test("a dead socket is abandoned: no wait for close, its late events are ignored", () => {
    const { open, ws, clock, pong, WS, sock, of } = setup();
    const dead = open({ interval_ms: 1000, timeout_ms: 500 });
    pong();
    clock.tick(1500);
    assert.equal(sock.state, "reconnecting");
    clock.tick(1000); // the backoff of attempt 0 is at most 1 s
    assert.equal(WS.instances.length, 2, "reconnected without any close event");
    // The old socket's close arrives 60 s later in Chromium; it must change nothing.
    dead.onclose?.({ code: 1006, reason: "", wasClean: false });
    dead.onmessage?.({ data: JSON.stringify({ type: "chat", text: "late" }) });
    assert.equal(of("message").length, 0);
    assert.equal(of("close").length, 1);
    assert.equal(sock.state, "reconnecting");
  });

  test("any inbound frame is liveness, not only the pong", () => {
    const { open, clock, pong, of, ws } = setup();
    const w = open({ interval_ms: 1000, timeout_ms: 500 });
    pong();
    clock.tick(1000); // ping 2 goes out; its deadline is 500 ms later
    clock.tick(400);
    w.serverSend({ type: "chat", text: "busy server", from: "x" });
    clock.tick(500);
    assert.equal(of("close").length, 0);
    assert.equal(w.closeCalls.length, 0);
    // The pong of ping 2 never came: the next ping still goes out on time.
    clock.tick(100);
    assert.equal(w.pings().length, 3);
    pong();
    clock.tick(1000);
    assert.equal(w.pings().length, 4);
  });

  test("a server probe is answered at once with its id", () => {
    const { open, ws } = setup();
    const w = open();
    w.serverSend({ type: "ping", id: "s1" });
    assert.deepEqual(w.frames().at(-1), { type: "pong", id: "s1", visible: true });
  });

  test("interval_ms null: no pings, but probes are still answered", () => {
    const { open, clock } = setup();
    const w = open({ interval_ms: null, timeout_ms: null });
    clock.tick(120000);
    assert.equal(w.pings().length, 0);
    w.serverSend({ type: "ping", id: "s3" });
    assert.equal(w.frames().at(-1).id, "s3");
  });

  test("a pong for an earlier ping still measures its round trip", () => {
    const { open, clock, of, page } = setup();
    const w = open();
    clock.tick(10);
    page.setVisible(false); // ping 2
    clock.tick(10);
    w.serverSend({ type: "pong", id: 1 });
    assert.equal(of("pong")[0].rtt, 20);
  });
});

describe("visibility and lifecycle", () => {
  test("hiding sends a ping with visible: false at once", () => {
    const { open, page } = setup();
    const w = open();
    page.setVisible(false);
    assert.deepEqual(w.pings().at(-1), { type: "ping", id: 2, visible: false });
  });

  test("becoming visible sends a probe with a short deadline", () => {
    const { open, pong, page, clock, of } = setup();
    const w = open();
    pong();
    page.setVisible(false);
    pong();
    clock.tick(100);
    page.setVisible(true);
    // After a pong, each ping reports the round trip measured (0 ms on the fake clock).
    assert.deepEqual(w.pings().at(-1), { type: "ping", id: 3, visible: true, rtt_ms: 0 });
    clock.tick(4999);
    assert.equal(of("close").length, 0);
    clock.tick(1);
    assert.equal(of("close")[0].code, 4408, "probe deadline is 5 s, not the 10 s timeout");
  });

  test("a ping reports the last round trip the client measured", () => {
    const { open, pong, clock } = setup();
    const w = open();
    assert.equal("rtt_ms" in w.pings()[0], false, "nothing measured yet");
    clock.tick(37);
    pong();
    clock.tick(25000);
    assert.equal(w.pings().at(-1).rtt_ms, 37);
  });

  test("the client-side timeout is not enforced while hidden, and pings go on", () => {
    const { open, pong, page, clock, of } = setup();
    const w = open({ interval_ms: 1000, timeout_ms: 500 });
    pong();
    page.setVisible(false);
    clock.align = 1000; // hidden tabs run timers at 1 Hz at best
    clock.tick(60000);
    assert.equal(of("close").length, 0);
    assert.ok(w.pings().length > 10, "keeps pinging while hidden");
    assert.ok(w.pings().slice(2).every((p) => p.visible === false));
    // Visible again: the missed deadline is not a verdict, a probe is.
    clock.align = 0;
    page.setVisible(true);
    assert.equal(w.pings().at(-1).visible, true);
    pong();
    clock.tick(600);
    assert.equal(of("close").length, 0);
  });

  test("visible after a silent hidden spell: dead within the probe deadline", () => {
    const { open, pong, page, clock, of } = setup();
    open();
    pong();
    page.setVisible(false);
    clock.tick(60000);
    page.setVisible(true);
    clock.tick(4999);
    assert.equal(of("close").length, 0);
    clock.tick(1);
    assert.equal(of("close").length, 1);
  });

  test("a late timer (frozen page) probes before it kills", () => {
    const { open, pong, clock, of, ws } = setup();
    const w = open({ interval_ms: 1000, timeout_ms: 500 });
    pong();
    clock.tick(1000); // ping 2, deadline at +500
    clock.jump(60000); // the machine slept
    clock.tick(0); // the overdue timer finally fires
    assert.equal(of("close").length, 0);
    assert.equal(w.pings().at(-1).id, 3, "a probe, not a kill");
    pong(); // the answer was queued behind the timer
    clock.tick(100);
    assert.equal(of("close").length, 0);
  });

  test("a late timer with no answer to the probe is dead after the probe deadline", () => {
    const { open, pong, clock, of } = setup();
    open({ interval_ms: 1000, timeout_ms: 500 });
    pong();
    clock.tick(1000);
    clock.jump(60000);
    clock.tick(0);
    clock.tick(5000);
    assert.equal(of("close")[0].code, 4408);
  });

  test("resume re-checks the deadline with a probe", () => {
    const { open, pong, page, clock } = setup();
    const w = open();
    pong();
    clock.jump(300000);
    page.fire("document", "resume");
    assert.equal(w.pings().length, 2);
  });

  test("online probes an open socket", () => {
    const { open, pong, page } = setup();
    const w = open();
    pong();
    page.setOnline(false);
    assert.equal(w.pings().length, 1, "offline alone does not tear down an open socket");
    page.setOnline(true);
    assert.equal(w.pings().length, 2);
  });

  test("offline while reconnecting: state offline, no attempts; online reconnects at once", () => {
    const { open, ws, page, clock, sock, WS } = setup();
    open();
    page.window.navigator.onLine = false;
    ws().serverClose(1006);
    assert.equal(sock.state, "offline");
    clock.tick(20000);
    assert.equal(WS.instances.length, 1);
    page.setOnline(true);
    assert.equal(WS.instances.length, 2);
  });

  test("no reconnect while hidden; visible reconnects at once", () => {
    const { open, ws, page, clock, sock, WS } = setup();
    open();
    page.setVisible(false);
    ws().serverClose(1012);
    clock.tick(60000);
    assert.equal(WS.instances.length, 1);
    assert.equal(sock.state, "suspended");
    page.setVisible(true);
    assert.equal(WS.instances.length, 2);
    assert.equal(sock.state, "reconnecting");
  });

  test("reconnectWhileHidden: true keeps retrying in the background", () => {
    const { open, ws, page, clock, WS } = setup({ reconnectWhileHidden: true });
    open();
    page.setVisible(false);
    ws().serverClose(1012);
    clock.tick(1000);
    assert.equal(WS.instances.length, 2);
  });

  test("visible while waiting in backoff skips the wait", () => {
    const { open, ws, page, clock, WS } = setup({ random: () => 1 });
    open();
    for (let i = 0; i < 5; i++) { ws().serverClose(1006); clock.tick(40000); }
    ws().serverClose(1006);
    const n = WS.instances.length;
    page.setVisible(false);
    page.setVisible(true);
    assert.equal(WS.instances.length, n + 1);
  });

  test("pagehide (persisted) closes and suspends; pageshow (persisted) reconnects at once", () => {
    const { open, page, sock, WS, clock } = setup();
    const w = open();
    page.fire("window", "pagehide", { persisted: true });
    assert.deepEqual(w.closeCalls, [[1000, "pagehide"]]);
    assert.equal(sock.state, "suspended");
    clock.tick(60000);
    assert.equal(WS.instances.length, 1);
    page.fire("window", "pageshow", { persisted: true });
    assert.equal(WS.instances.length, 2);
    // The old socket's late close (Chromium delivers it after pageshow) changes nothing.
    w.onclose?.({ code: 1006 });
    assert.equal(sock.state, "reconnecting");
  });

  test("pagehide that is not persisted leaves the socket to the browser", () => {
    const { open, page, sock } = setup();
    const w = open();
    page.fire("window", "pagehide", { persisted: false });
    assert.equal(w.closeCalls.length, 0);
    assert.equal(sock.state, "open");
  });

  test("never listens to unload or beforeunload", () => {
    const { page } = setup();
    assert.ok(page.listeners.includes("pagehide"));
    assert.ok(!page.listeners.includes("unload"));
    assert.ok(!page.listeners.includes("beforeunload"));
  });
});

describe("backoff", () => {
  test("attempt 0 waits U(0, 1 s); attempt n waits U(0.5 s, min(30 s, 2^n s))", () => {
    assert.equal(backoff(0, () => 0), 0);
    assert.equal(backoff(0, () => 1), 1000);
    for (let n = 1; n <= 12; n++) {
      const cap = Math.min(30000, 1000 * 2 ** n);
      assert.equal(backoff(n, () => 0), 500);
      assert.equal(backoff(n, () => 1), cap);
    }
    assert.equal(backoff(1000, () => 1), 30000, "no overflow at huge attempts");
  });

  test("keeps its spread at the cap: 10,000 clients do not bunch on one millisecond", () => {
    const counts = new Map();
    let min = Infinity, max = 0;
    const draws = 10000;
    for (let i = 0; i < draws; i++) {
      const d = backoff(20, Math.random);
      counts.set(d, (counts.get(d) || 0) + 1);
      min = Math.min(min, d);
      max = Math.max(max, d);
    }
    const top = Math.max(...counts.values());
    assert.ok(top < draws / 100, `most common delay taken by ${top} of ${draws}`);
    assert.ok(counts.size > draws / 2, `only ${counts.size} distinct delays`);
    assert.ok(min < 3000 && max > 27000, `spread ${min}..${max}`);
    // Spread in tenths of the range: each holds roughly a tenth.
    const buckets = new Array(10).fill(0);
    for (const [d, c] of counts) buckets[Math.min(9, Math.floor((d - 500) / 2950))] += c;
    assert.ok(buckets.every((b) => b > draws / 20), `buckets ${buckets}`);
  });

  test("the client's delays grow, cap at 30 s, and it retries forever", () => {
    const { ws, clock, of, WS } = setup({ random: () => 1, connectTimeout: 1e9 });
    for (let i = 0; i < 200; i++) {
      ws().serverClose(1006);
      clock.tick(30000);
    }
    assert.equal(WS.instances.length, 201);
    const delays = of("retry").map((e) => e.delay);
    assert.deepEqual(delays.slice(0, 7), [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    assert.ok(delays.every((d) => d <= 30000));
    assert.deepEqual(of("retry").slice(0, 3).map((e) => e.attempt), [1, 2, 3]);
  });

  test("retry events carry the attempt, the delay and when it is due", () => {
    const { ws, clock, of, sock } = setup({ random: () => 0.5 });
    const t = clock.t;
    ws().serverClose(1006);
    const [retry] = of("retry");
    assert.deepEqual([retry.attempt, retry.delay, retry.at], [1, 500, t + 500]);
    assert.equal(sock.retryAt, t + 500);
  });

  test("resets only after a pong on the new connection, not on open", () => {
    const { ws, clock, open, pong, sock } = setup({ random: () => 1 });
    ws().serverClose(1006);
    clock.tick(1000);
    ws().serverClose(1006);
    clock.tick(2000);
    open(); // hello, first ping out, no pong yet
    assert.equal(sock.attempt, 2);
    ws().serverClose(1006);
    assert.equal(sock.attempt, 3, "an open that never ponged does not reset");
    clock.tick(8000);
    open();
    pong();
    assert.equal(sock.attempt, 0);
  });

  test("maxAttempts gives up: state closed", () => {
    const { ws, clock, sock, WS, of } = setup({ maxAttempts: 2 });
    ws().serverClose(1006);
    clock.tick(30000);
    ws().serverClose(1006);
    clock.tick(30000);
    ws().serverClose(1006);
    clock.tick(30000);
    assert.equal(WS.instances.length, 3);
    assert.equal(sock.state, "closed");
    assert.equal(of("close").at(-1).willReconnect, false);
  });
});

describe("close codes and retry hints", () => {
  const terminal = [1008, 4400, 4401, 4403, 4500, 4777, 4999];
  const retried = [1000, 1001, 1005, 1006, 1011, 1012, 1013, 4000, 4001, 4408, 4429, 4499, 3000];

  test("the rule matches docs/close-codes.md", () => {
    for (const code of terminal) assert.equal(shouldReconnect(code), false, code);
    for (const code of retried) assert.equal(shouldReconnect(code), true, code);
    assert.equal(shouldReconnect(undefined), true);
  });

  for (const code of terminal) {
    test(`${code} stops the client`, () => {
      const { open, ws, clock, sock, WS, of, page } = setup();
      open();
      ws().serverClose(code, "");
      clock.tick(120000);
      page.setOnline(true);
      page.setVisible(true);
      assert.equal(sock.state, "closed");
      assert.equal(WS.instances.length, 1);
      assert.equal(of("close")[0].willReconnect, false);
    });
  }

  for (const code of [1000, 1001, 1011, 1012, 4000, 4408]) {
    test(`${code} reconnects`, () => {
      const { open, ws, clock, WS } = setup();
      open();
      ws().serverClose(code);
      clock.tick(1000);
      assert.equal(WS.instances.length, 2);
    });
  }

  test("a close notice frame's retry_after_ms is a minimum (Daphne drops close reasons)", () => {
    const { open, ws, clock, WS, of } = setup({ random: () => 1 });
    const w = open();
    w.serverSend({ type: "close", code: 4429, reason: "too many messages", retry_after_ms: 5000 });
    w.serverClose(4429, "");
    assert.equal(of("retry")[0].delay, 6000, "hint plus the jittered backoff");
    clock.tick(5999);
    assert.equal(WS.instances.length, 1);
    clock.tick(1);
    assert.equal(WS.instances.length, 2);
  });

  test("a hint replaces the backoff grown by earlier failures, plus the first jitter", () => {
    const { open, ws, clock, WS, of } = setup({ random: () => 1 });
    open();
    ws().serverClose(1006);
    for (let i = 1; i <= 5; i++) {  // five attempts fail before the server answers
      clock.tick(of("retry")[i - 1].delay);
      WS.instances[i].serverClose(1006);
    }
    assert.equal(of("retry")[5].delay, 30000, "unhinted: the grown backoff, at its cap");
    clock.tick(30000);
    WS.instances[6].serverSend({ type: "close", code: 4013, retry_after_ms: 2500 });
    WS.instances[6].serverClose(4013, "");
    assert.equal(of("retry")[6].delay, 3500, "the hint plus U(0, baseDelay), not 32.5 s");
    assert.equal(of("retry")[6].attempt, 7, "the attempts still count");
  });

  test("a hint in the close reason is honoured too", () => {
    assert.equal(retryHint("draining; retry_after_ms=3000"), 3000);
    assert.equal(retryHint(""), null);
    const { open, ws, of } = setup({ random: () => 0 });
    open();
    ws().serverClose(4001, "draining; retry_after_ms=3000");
    assert.equal(of("retry")[0].delay, 3000);
  });

  test("visible or online does not jump a retry hint", () => {
    const { open, ws, clock, WS, page } = setup({ random: () => 0 });
    open();
    ws().serverSend({ type: "close", code: 4429, retry_after_ms: 5000 });
    ws().serverClose(4429);
    clock.tick(1000);
    page.setVisible(false);
    page.setVisible(true);
    page.setOnline(true);
    assert.equal(WS.instances.length, 1);
    clock.tick(4000);
    assert.equal(WS.instances.length, 2);
  });

  test("the hint of one connection does not leak into the next", () => {
    const { open, ws, clock, of } = setup({ random: () => 0 });
    open();
    ws().serverSend({ type: "close", code: 4429, retry_after_ms: 5000 });
    ws().serverClose(4429);
    clock.tick(5000);
    open();
    ws().serverClose(1006);
    assert.equal(of("retry")[1].delay, 500);
  });
});

describe("sending", () => {
  test("send while open goes out at once; values are sent as JSON", () => {
    const { open, sock } = setup();
    const w = open();
    assert.equal(sock.send({ type: "chat", text: "hi" }), true);
    assert.equal(sock.send("raw"), true);
    assert.deepEqual(w.sent.slice(-2), ['{"type":"chat","text":"hi"}', "raw"]);
  });

  test("sends while disconnected are queued and flushed after the open listeners ran", () => {
    const { sock, open } = setup();
    assert.equal(sock.send({ n: 1 }), false);
    sock.send({ n: 2 });
    sock.on("open", () => sock.send({ subscribe: true }));
    const w = open();
    const frames = w.frames().filter((f) => f.type !== "ping");
    assert.deepEqual(frames, [{ subscribe: true }, { n: 1 }, { n: 2 }]);
  });

  test("the queue keeps at most 100 messages, dropping the oldest", () => {
    const { sock, open, of } = setup();
    for (let i = 0; i < 150; i++) sock.send({ i });
    assert.equal(of("drop").length, 50);
    assert.deepEqual(of("drop")[0].data, '{"i":0}');
    const w = open();
    const sent = w.frames().filter((f) => f.type !== "ping").map((f) => f.i);
    assert.equal(sent.length, 100);
    assert.equal(sent[0], 50);
    assert.equal(sent.at(-1), 149);
  });

  test("the queue keeps at most 64 KiB, counted in UTF-8 bytes", () => {
    const { sock, open, of } = setup();
    const kib = "é".repeat(512); // 1 KiB in UTF-8
    for (let i = 0; i < 70; i++) sock.send(kib);
    assert.equal(of("drop").length, 6);
    const w = open();
    assert.equal(w.sent.filter((s) => s === kib).length, 64);
  });

  test("a queue of smaller limits is honoured", () => {
    const { sock, of } = setup({ maxQueue: 2 });
    sock.send("a"); sock.send("b"); sock.send("c");
    assert.deepEqual(of("drop").map((e) => e.data), ["a"]);
  });

  test("send after close() returns false and queues nothing", () => {
    const { sock, open } = setup();
    open();
    sock.close();
    assert.equal(sock.send("x"), false);
  });

  test("binary data is sent as is", () => {
    const { sock, open } = setup();
    const w = open();
    const buf = new Uint8Array([1, 2, 3]);
    sock.send(buf);
    assert.equal(w.sent.at(-1), buf);
  });
});

describe("API", () => {
  test("message events carry non-heartbeat frames only", () => {
    const { open, of, pong } = setup();
    const w = open();
    pong();
    w.serverSend({ type: "ping", id: "s1" });
    w.serverSend({ type: "presence_state", room: "lobby", members: {} });
    w.serverSend({ type: "chat", text: "hi", from: "anon:x" });
    w.serverSend({ type: "error", code: "unknown_type", detail: "..." });
    w.serverSend("not json");
    const buf = new ArrayBuffer(2);
    w.serverSend(buf);
    assert.deepEqual(of("message").map((e) => e.data), [
      { type: "chat", text: "hi", from: "anon:x" },
      { type: "error", code: "unknown_type", detail: "..." },
      "not json",
      buf,
    ]);
  });

  test("close() stops for good: no reconnect, lifecycle events are ignored", () => {
    const { open, sock, page, clock, WS, of } = setup();
    const w = open();
    sock.close();
    assert.deepEqual(w.closeCalls, [[1000, ""]]);
    assert.equal(sock.state, "closed");
    page.setVisible(false);
    page.setVisible(true);
    page.setOnline(true);
    page.fire("window", "pageshow", { persisted: true });
    clock.tick(120000);
    assert.equal(WS.instances.length, 1);
    assert.equal(of("close").length, 1);
    assert.equal(of("close")[0].willReconnect, false);
  });

  test("reconnect() drops the socket and connects again at once", () => {
    const { open, sock, WS } = setup();
    const w = open();
    sock.reconnect();
    assert.equal(WS.instances.length, 2);
    assert.equal(w.onmessage, null);
    assert.equal(sock.state, "reconnecting");
  });

  test("connect() after close() starts again", () => {
    const { open, sock, WS, page } = setup();
    open();
    sock.close();
    sock.connect();
    assert.equal(WS.instances.length, 2);
    open();
    assert.equal(sock.state, "open");
    page.setVisible(false);
    assert.equal(WS.instances[1].pings().at(-1).visible, false, "lifecycle listeners are back");
  });

  test("a listener that throws does not break the client", () => {
    const { sock, open, clock, pong } = setup();
    sock.on("open", () => { throw new Error("app bug"); });
    open();
    assert.equal(sock.state, "open");
    pong();
    assert.ok(sock.rtt !== null);
    assert.throws(() => clock.tick(0), /app bug/, "rethrown in a task of its own");
  });

  test("on() returns an unsubscribe function", () => {
    const { sock, open } = setup();
    let n = 0;
    const off = sock.on("state", () => { n += 1; });
    off();
    open();
    assert.equal(n, 0);
  });

  test("state events follow the life of a connection", () => {
    const { open, ws, clock, of, pong } = setup();
    open();
    pong();
    ws().serverClose(1012);
    clock.tick(1000);
    open();
    assert.deepEqual(of("state").map((e) => e.state), ["open", "reconnecting", "open"]);
  });

  test("defaults are documented values", () => {
    assert.equal(DEFAULTS.probeTimeout, 5000);
    assert.equal(DEFAULTS.connectTimeout, 10000);
    assert.equal(DEFAULTS.maxQueue, 100);
    assert.equal(DEFAULTS.maxQueueBytes, 65536);
    assert.equal(DEFAULTS.maxAttempts, Infinity);
  });
});

test("with no timers injected, the globals are looked up at call time (mock.timers)", () => {
  // The clock stays injected: Date mocking needs node 20.11, Debian's nodejs is 18.
  let t = 5_000_000;
  const tick = (ms) => { t += ms; mock.timers.tick(ms); };
  try {
    mock.timers.enable({ apis: ["setTimeout"] });
  } catch {
    mock.timers.enable(["setTimeout"]);
  }
  try {
    const WS = fakeWebSocketClass();
    const page = fakePage();
    const sock = new HeartbeatSocket("ws://h/ws/", { WebSocket: WS, window: page.window, document: page.document, storage: fakeStorage(), random: () => 0.5, now: () => t });
    const w = WS.instances[0];
    w.serverOpen();
    w.serverSend(JSON.stringify({ type: "hello", interval_ms: 1000, timeout_ms: 500 }));
    tick(30);
    w.serverSend(JSON.stringify({ type: "pong", id: 1 }));
    assert.equal(sock.rtt, 30);
    tick(1000);
    assert.equal(w.pings().length, 2);
    tick(500);
    assert.equal(sock.state, "reconnecting");
    sock.close();
  } finally {
    mock.timers.reset();
  }
});

test("loads as an ES module and as a classic script defining the same global", async () => {
  const mod = await import("../../heartbeat_app/static/heartbeat_app/heartbeat.mjs");
  assert.equal(mod.default, globalThis.HeartbeatSocket);
  assert.equal(mod.HeartbeatSocket, mod.default);
  assert.ok(new FakeClock());
});
