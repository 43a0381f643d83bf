// Presence the app drives (docs/presence.md#presence-the-app-drives): join, leave,
// setPresence, broadcast, big rooms' counts and refusals, across reconnects.
import { test, describe } from "node:test";
import assert from "node:assert/strict";

import { setup } from "./fakes.mjs";

const meta = (key, ref, extra = {}) => ({ session: `s-${ref}`, key, visible: true, online_at: 1, ref, ...extra });
const members = (...metas) => {
  const out = {};
  for (const m of metas) (out[m.key] = out[m.key] || { metas: [] }).metas.push(m);
  return out;
};
const state = (room, ...metas) => ({ type: "presence_state", room, members: members(...metas), count: new Set(metas.map((m) => m.key)).size });
/** Frames the client sent that are not heartbeats. */
const requests = (w) => w.frames().filter((f) => f && f.type !== "ping" && f.type !== "pong");
/** The server drops the connection; the client reconnects, gets hello, and its ping a pong. */
function reconnect(env) {
  const old = env.ws();
  old.serverClose(1012);
  env.clock.tick(1000);
  assert.notEqual(env.ws(), old, "a new socket");
  const w = env.open();
  env.pong(w);   // proof of life: the next loss starts the backoff afresh
  return w;
}

describe("join", () => {
  test("join() while open sends a join frame; the room's presence_state fills its members", () => {
    const { sock, open, of } = setup();
    const w = open();
    assert.equal(sock.join("dev"), true);
    assert.deepEqual(requests(w), [{ type: "join", room: "dev" }]);
    w.serverSend(state("dev", meta("1", "a"), meta("2", "b")));
    assert.deepEqual(Object.keys(sock.members("dev")).sort(), ["1", "2"]);
    assert.equal(sock.count("dev"), 2);
    assert.deepEqual(of("join").map((e) => [e.room, e.key]), [["dev", "1"], ["dev", "2"]]);
  });

  test("join() before the connection opens goes out after the open listeners, before the queue", () => {
    const { sock, ws, open } = setup();
    assert.equal(sock.join("dev"), false);
    sock.send({ type: "chat", text: "queued" });
    sock.on("open", () => sock.send({ type: "subscribe" }));
    const w = open();
    assert.deepEqual(requests(w).map((f) => f.type), ["subscribe", "join", "chat"]);
    assert.equal(ws(), w);
  });

  test("joined rooms are joined again after a reconnect, each with its latest state", () => {
    const env = setup();
    const { sock, open } = env;
    open();
    sock.join("dev");
    sock.join("ops");
    sock.setPresence("dev", { status: "available" });
    sock.setPresence("dev", { status: "busy" });
    const w = reconnect(env);
    assert.deepEqual(requests(w), [
      { type: "join", room: "dev" },
      { type: "presence_update", room: "dev", state: { status: "busy" } },
      { type: "join", room: "ops" },
    ]);
  });

  test("a room an open listener joined again is not joined twice", () => {
    const env = setup();
    env.open();
    env.sock.join("dev");
    env.sock.on("open", () => env.sock.join("dev"));
    const w = reconnect(env);
    assert.deepEqual(requests(w), [{ type: "join", room: "dev" }]);
  });

  test("a bad room name throws at the call", () => {
    const { sock } = setup();
    for (const room of ["", "a b", "x".repeat(81), null, 7]) {
      assert.throws(() => sock.join(room), TypeError);
      assert.throws(() => sock.leave(room), TypeError);
      assert.throws(() => sock.setPresence(room, {}), TypeError);
      assert.throws(() => sock.broadcast(room, "typing", {}), TypeError);
    }
    assert.doesNotThrow(() => sock.join("private-ops.v2_x"));
  });
});

describe("leave", () => {
  test("leave() sends a leave frame and forgets the room's members; it is not joined again", () => {
    const env = setup();
    const { sock, open, of } = env;
    const w = open();
    sock.join("dev");
    w.serverSend(state("dev", meta("1", "a")));
    const leaves = of("leave").length;
    assert.equal(sock.leave("dev"), true);
    assert.deepEqual(requests(w).at(-1), { type: "leave", room: "dev" });
    assert.deepEqual(sock.members("dev"), {});
    assert.equal(sock.count("dev"), null);
    assert.deepEqual(of("presence").at(-1), { type: "presence", room: "dev", members: {}, count: null, countOnly: false, t: env.clock.t });
    assert.equal(of("leave").length, leaves, "the members did not leave; this tab did");
    assert.deepEqual(requests(reconnect(env)), []);
  });

  test("frames of a left room still in flight are ignored, and no second leave goes out", () => {
    const { sock, open, of } = setup();
    const w = open();
    sock.join("dev");
    w.serverSend(state("dev", meta("1", "a")));
    sock.leave("dev");
    const presence = of("presence").length;
    w.serverSend({ type: "presence_diff", room: "dev", joins: members(meta("2", "b")), leaves: {} });
    w.serverSend(state("dev", meta("1", "a")));
    w.serverSend({ type: "presence_count", room: "dev", count: 9 });
    w.serverSend({ type: "broadcast", room: "dev", event: "typing", from: "1", data: {} });
    assert.equal(of("presence").length, presence);
    assert.equal(of("broadcast").length, 0);
    assert.equal(of("message").length, 0);
    assert.deepEqual(sock.members("dev"), {});
    assert.equal(requests(w).filter((f) => f.type === "leave").length, 1);
  });

  test("a room of the connect URL, once left, is left again when a reconnect puts the tab back in", () => {
    const env = setup();
    const { sock, open, of } = env;
    let w = open();
    w.serverSend(state("lobby", meta("1", "a")));   // joined by the server on accept
    sock.leave("lobby");
    w = reconnect(env);
    const presence = of("presence").length;
    w.serverSend(state("lobby", meta("1", "a2")));
    assert.deepEqual(requests(w), [{ type: "leave", room: "lobby" }]);
    assert.equal(of("presence").length, presence);
    assert.deepEqual(sock.members("lobby"), {});
    w.serverSend(state("lobby", meta("1", "a2")));   // a late duplicate: no second leave
    assert.equal(requests(w).length, 1);
  });

  test("leave() while disconnected sends nothing, and the room is not joined on the next open", () => {
    const env = setup();
    env.open();
    env.sock.join("dev");
    env.ws().serverClose(1012);
    assert.equal(env.sock.leave("dev"), false);
    env.clock.tick(1000);
    assert.deepEqual(requests(env.open()), []);
  });

  test("join() after leave() takes the room's frames again", () => {
    const { sock, open } = setup();
    const w = open();
    sock.join("dev");
    sock.leave("dev");
    sock.join("dev");
    w.serverSend(state("dev", meta("1", "a")));
    assert.deepEqual(Object.keys(sock.members("dev")), ["1"]);
    assert.deepEqual(requests(w).map((f) => f.type), ["join", "leave", "join"]);
  });
});

describe("setPresence", () => {
  test("sends a presence_update with the state", () => {
    const { sock, open } = setup();
    const w = open();
    sock.join("dev");
    assert.equal(sock.setPresence("dev", { status: "busy" }), true);
    assert.deepEqual(requests(w).at(-1), { type: "presence_update", room: "dev", state: { status: "busy" } });
  });

  test("refuses what the server would refuse: no object, or more than 1 KiB", () => {
    const { sock } = setup();
    for (const bad of [null, [], "busy", 3]) assert.throws(() => sock.setPresence("dev", bad), TypeError);
    assert.throws(() => sock.setPresence("dev", { note: "é".repeat(510) }), RangeError);
    assert.doesNotThrow(() => sock.setPresence("dev", { note: "x".repeat(1000) }));
  });

  test("while disconnected the state is kept and sent right behind the join on open", () => {
    const { sock, open } = setup();
    sock.join("dev");
    assert.equal(sock.setPresence("dev", { status: "busy" }), false);
    assert.deepEqual(requests(open()), [
      { type: "join", room: "dev" },
      { type: "presence_update", room: "dev", state: { status: "busy" } },
    ]);
  });

  test("the state of a room the server joined on accept is sent again once its presence_state arrives", () => {
    const env = setup();
    let w = env.open();
    w.serverSend(state("lobby", meta("1", "a")));
    env.sock.setPresence("lobby", { status: "busy" });
    w = reconnect(env);
    assert.deepEqual(requests(w), []);
    w.serverSend(state("lobby", meta("1", "a2")));
    w.serverSend(state("lobby", meta("1", "a2")));
    assert.deepEqual(requests(w), [{ type: "presence_update", room: "lobby", state: { status: "busy" } }]);
  });

  test("what is sent again is the state as it was set, not a later change to the object", () => {
    const env = setup();
    env.open();
    env.sock.join("dev");
    const mine = { status: "busy" };
    env.sock.setPresence("dev", mine);
    mine.status = "mutated";
    assert.deepEqual(requests(reconnect(env)).at(-1).state, { status: "busy" });
  });

  test("a state refused with invalid_state is not sent again after a reconnect", () => {
    const env = setup();
    const w = env.open();
    env.sock.join("dev");
    env.sock.setPresence("dev", { status: "asleep" });
    w.serverSend({ type: "error", code: "invalid_state", room: "dev", detail: "status must be available or busy" });
    assert.deepEqual(env.of("refused").map((e) => [e.room, e.code]), [["dev", "invalid_state"]]);
    assert.deepEqual(requests(reconnect(env)), [{ type: "join", room: "dev" }]);
  });
});

describe("broadcast", () => {
  test("sends the signal at once; data defaults to {}", () => {
    const { sock, open } = setup();
    const w = open();
    assert.equal(sock.broadcast("dev", "typing", { typing: true }), true);
    assert.equal(sock.broadcast("dev", "cursor"), true);
    assert.deepEqual(requests(w), [
      { type: "broadcast", room: "dev", event: "typing", data: { typing: true } },
      { type: "broadcast", room: "dev", event: "cursor", data: {} },
    ]);
  });

  test("refuses a bad event name and data over 4 KiB", () => {
    const { sock, open } = setup();
    open();
    for (const bad of ["", "a b", "x".repeat(65), null]) assert.throws(() => sock.broadcast("dev", bad, {}), TypeError);
    assert.throws(() => sock.broadcast("dev", "typing", { s: "x".repeat(4096) }), RangeError);
  });

  test("is throttled per room and event: inside the window the latest is kept and sent when it ends", () => {
    const { sock, open, clock } = setup();
    const w = open();
    sock.broadcast("dev", "typing", { n: 1 });
    clock.tick(30);
    assert.equal(sock.broadcast("dev", "typing", { n: 2 }), false);
    clock.tick(30);
    assert.equal(sock.broadcast("dev", "typing", { n: 3 }), false);
    assert.equal(sock.broadcast("dev", "cursor", { x: 1 }), true, "another event has its own window");
    assert.equal(sock.broadcast("ops", "typing", { n: 1 }), true, "another room has its own window");
    const typing = () => requests(w).filter((f) => f.room === "dev" && f.event === "typing").map((f) => f.data.n);
    assert.deepEqual(typing(), [1]);
    clock.tick(39);
    assert.deepEqual(typing(), [1]);
    clock.tick(1);
    assert.deepEqual(typing(), [1, 3], "sent 100 ms after the first, with the latest data");
    clock.tick(50);
    assert.equal(sock.broadcast("dev", "typing", { n: 4 }), false, "a new window began at the trailing send");
    clock.tick(50);
    assert.deepEqual(typing(), [1, 3, 4]);
    clock.tick(500);
    assert.equal(sock.broadcast("dev", "typing", { n: 5 }), true);
  });

  test("signalInterval: 0 sends every signal", () => {
    const { sock, open } = setup({ signalInterval: 0 });
    const w = open();
    sock.broadcast("dev", "typing", {});
    sock.broadcast("dev", "typing", {});
    assert.equal(requests(w).length, 2);
  });

  test("is never queued: dropped while disconnected, and a held signal is dropped with its connection", () => {
    const env = setup();
    const { sock, clock } = env;
    assert.equal(sock.broadcast("dev", "typing", {}), false);
    const first = env.open();
    assert.equal(requests(first).length, 0);
    sock.broadcast("dev", "typing", { n: 1 });
    sock.broadcast("dev", "typing", { n: 2 });   // held
    const second = reconnect(env);
    clock.tick(1000);
    assert.deepEqual(requests(first).map((f) => f.data.n), [1]);
    assert.deepEqual(requests(second), []);
    assert.equal(sock.broadcast("dev", "typing", { n: 3 }), true, "the new connection starts a fresh window");
  });

  test("a signal from another member is a broadcast event, not a message", () => {
    const { open, of } = setup();
    const w = open();
    w.serverSend({ type: "broadcast", room: "dev", event: "typing", from: "anon:x", data: { typing: true } });
    assert.deepEqual(of("broadcast").map(({ room, event, from, data }) => ({ room, event, from, data })),
      [{ room: "dev", event: "typing", from: "anon:x", data: { typing: true } }]);
    assert.equal(of("message").length, 0);
  });

  test("a big room's broadcasts frame is one broadcast event per signal, in order", () => {
    const { sock, open, of } = setup();
    const w = open();
    w.serverSend({ type: "broadcasts", room: "dev", signals: [
      { event: "typing", from: "1", data: { on: true } },
      { event: "cursor", from: "2", data: [3, 4] },
      { from: "3" },   // no event: skipped
    ] });
    assert.deepEqual(of("broadcast").map(({ room, event, from, data }) => ({ room, event, from, data })), [
      { room: "dev", event: "typing", from: "1", data: { on: true } },
      { room: "dev", event: "cursor", from: "2", data: [3, 4] },
    ]);
    assert.equal(of("message").length, 0);
    sock.join("ops");
    sock.leave("ops");
    w.serverSend({ type: "broadcasts", room: "ops", signals: [{ event: "typing", from: "1", data: {} }] });
    assert.equal(of("broadcast").length, 2, "a left room's batch in flight is ignored");
    w.serverSend({ type: "broadcasts", room: "dev", text: "no signals" });
    assert.equal(of("message").length, 1, "an app's own frame of that name stays a message");
  });

  test("an app's own broadcast frame (no room or event) stays a message", () => {
    const { open, of } = setup();
    open().serverSend({ type: "broadcast", text: "all hands" });
    assert.equal(of("broadcast").length, 0);
    assert.deepEqual(of("message")[0].data, { type: "broadcast", text: "all hands" });
  });
});

describe("counts and big rooms", () => {
  test("a room's count comes with its list and follows its diffs; count fires when it changes", () => {
    const { sock, open, of } = setup();
    const w = open();
    w.serverSend(state("lobby", meta("1", "a")));
    assert.deepEqual(of("count").map(({ room, count, countOnly }) => [room, count, countOnly]), [["lobby", 1, false]]);
    assert.equal(of("presence").at(-1).count, 1);
    w.serverSend({ type: "presence_diff", room: "lobby", joins: members(meta("2", "b")), leaves: {} });
    w.serverSend({ type: "presence_diff", room: "lobby", joins: members(meta("2", "b2", { visible: false })), leaves: members(meta("2", "b", { reason: "update" })) });
    assert.deepEqual(of("count").map((e) => e.count), [1, 2], "an update changes no count");
    assert.equal(sock.count("lobby"), 2);
    assert.equal(sock.count(), 2, "with no room: the only room");
    assert.equal(sock.count("nowhere"), null);
  });

  test("a count-only presence_state: no list, a count, no member events", () => {
    const { sock, open, of } = setup();
    open().serverSend({ type: "presence_state", room: "big", count: 5000 });
    assert.deepEqual(sock.members("big"), {});
    assert.equal(sock.count("big"), 5000);
    assert.equal(of("join").length, 0);
    const p = of("presence").at(-1);
    assert.deepEqual([p.room, p.members, p.count, p.countOnly], ["big", {}, 5000, true]);
    assert.deepEqual(of("count").map(({ count, countOnly }) => [count, countOnly]), [[5000, true]]);
  });

  test("presence_count updates a count-only room's count, without a presence event", () => {
    const { sock, open, of } = setup();
    const w = open();
    w.serverSend({ type: "presence_state", room: "big", count: 5000 });
    const presence = of("presence").length;
    w.serverSend({ type: "presence_count", room: "big", count: 5003 });
    w.serverSend({ type: "presence_count", room: "big", count: 5003 });
    assert.equal(sock.count("big"), 5003);
    assert.deepEqual(of("count").map((e) => e.count), [5000, 5003]);
    assert.equal(of("presence").length, presence);
    assert.equal(of("message").length, 0);
  });

  test("a room that grows past the limit turns count-only: its list goes, nobody leaves", () => {
    const { sock, open, of } = setup();
    const w = open();
    w.serverSend(state("lobby", meta("1", "a"), meta("2", "b")));
    w.serverSend({ type: "presence_count", room: "lobby", count: 201 });
    assert.deepEqual(sock.members("lobby"), {});
    assert.equal(of("leave").length, 0);
    const p = of("presence").at(-1);
    assert.deepEqual([p.members, p.count, p.countOnly], [{}, 201, true]);
    assert.deepEqual(of("count").at(-1).countOnly, true);
  });

  test("a diff for a count-only room asks for the state again, once; the list comes back without member events", () => {
    const { sock, open, of } = setup();
    const w = open();
    w.serverSend({ type: "presence_state", room: "big", count: 201 });
    w.serverSend({ type: "presence_diff", room: "big", joins: {}, leaves: members(meta("9", "z", { reason: "left" })) });
    w.serverSend({ type: "presence_diff", room: "big", joins: members(meta("8", "y")), leaves: {} });
    assert.deepEqual(requests(w), [{ type: "join", room: "big" }]);
    assert.deepEqual(sock.members("big"), {}, "a diff does not apply to a list the client lacks");
    w.serverSend(state("big", meta("1", "a"), meta("8", "y")));
    assert.deepEqual(Object.keys(sock.members("big")).sort(), ["1", "8"]);
    assert.equal(of("join").length, 0);
    assert.deepEqual(of("count").at(-1), { type: "count", room: "big", count: 2, countOnly: false, t: of("count").at(-1).t });
    w.serverSend({ type: "presence_diff", room: "big", joins: members(meta("3", "c")), leaves: {} });
    assert.deepEqual(of("join").map((e) => e.key), ["3"], "diffs apply again");
  });

  test("a presence_count for a room with no state yet is ignored", () => {
    const { sock, open, of } = setup();
    open().serverSend({ type: "presence_count", room: "big", count: 7 });
    assert.equal(sock.count("big"), null);
    assert.equal(of("count").length, 0);
  });
});

describe("refusals", () => {
  test("room_forbidden: a refused event, still a message, the connection stays, no rejoin", () => {
    const env = setup();
    const { sock, open, of } = env;
    const w = open();
    sock.join("private-ops");
    const refusal = { type: "error", code: "room_forbidden", room: "private-ops", detail: "This connection may not join this room." };
    w.serverSend(refusal);
    assert.deepEqual(of("refused").map(({ room, code, detail }) => ({ room, code, detail })),
      [{ room: "private-ops", code: "room_forbidden", detail: refusal.detail }]);
    assert.deepEqual(of("message").map((e) => e.data), [refusal]);
    assert.equal(sock.state, "open");
    assert.deepEqual(requests(reconnect(env)), []);
  });

  test("room_full for a room rejoined after a reconnect drops what was known of it", () => {
    const env = setup();
    let w = env.open();
    env.sock.join("dev");
    w.serverSend(state("dev", meta("1", "a")));
    w = reconnect(env);
    w.serverSend({ type: "error", code: "room_full", room: "dev", detail: "The room is full." });
    assert.deepEqual(env.sock.members("dev"), {});
    assert.equal(env.of("presence").at(-1).count, null);
    assert.deepEqual(requests(reconnect(env)), []);
  });

  test("too_many_tabs ends the interest in the room: a reconnect does not ask for it again", () => {
    const env = setup();
    const w = env.open();
    env.sock.join("dev");
    w.serverSend({ type: "error", code: "too_many_tabs", room: "dev", detail: "Too many tabs." });
    assert.deepEqual(env.of("refused").map((e) => e.code), ["too_many_tabs"]);
    assert.deepEqual(requests(reconnect(env)), []);
  });

  test("not_in_room is reported and changes nothing; an error about no room is no refusal", () => {
    const { sock, open, of } = setup();
    const w = open();
    sock.join("dev");
    w.serverSend({ type: "error", code: "not_in_room", room: "ops", detail: "This session is not in the room." });
    w.serverSend({ type: "error", code: "invalid_message", detail: "A pong must carry the id of the ping." });
    assert.deepEqual(of("refused").map((e) => e.code), ["not_in_room"]);
    assert.equal(of("message").length, 2);
  });
});
