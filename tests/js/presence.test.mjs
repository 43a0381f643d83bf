// Presence as docs/presence.md says: joins first, then leaves by ref; member-level join/leave.
import { test } from "node:test";
import assert from "node:assert/strict";

import { setup } from "./fakes.mjs";

const meta = (key, ref, extra = {}) => ({ session: `s-${ref}`, tab: `t-${ref}`, key, visible: true, online_at: 1, ref, ...extra });
const members = (...metas) => {
  const out = {};
  for (const m of metas) (out[m.key] = out[m.key] || { metas: [] }).metas.push(m);
  return out;
};

function joined() {
  const env = setup();
  const w = env.open();
  const send = (msg) => w.serverSend({ room: "lobby", ...msg });
  send({ type: "presence_state", members: members(meta("1", "a"), meta("2", "b")) });
  return { ...env, w, send };
}

test("presence_state fills the room and announces each member", () => {
  const { sock, of } = joined();
  assert.deepEqual(Object.keys(sock.members("lobby")).sort(), ["1", "2"]);
  assert.deepEqual(of("join").map((e) => e.key).sort(), ["1", "2"]);
  const [presence] = of("presence");
  assert.equal(presence.room, "lobby");
  assert.deepEqual(Object.keys(presence.members).sort(), ["1", "2"]);
  assert.equal(of("message").length, 0, "presence frames are not messages");
});

test("a diff join of a new key is a member join", () => {
  const { sock, of, send } = joined();
  send({ type: "presence_diff", joins: members(meta("3", "c")), leaves: {} });
  assert.deepEqual(of("join").at(-1).key, "3");
  assert.deepEqual(Object.keys(sock.members()).sort(), ["1", "2", "3"]);
});

test("a second tab of a member is no member join; closing one of two tabs is no member leave", () => {
  const { sock, of, send } = joined();
  const joins = of("join").length;
  send({ type: "presence_diff", joins: members(meta("1", "a2")), leaves: {} });
  assert.equal(of("join").length, joins);
  assert.equal(sock.members()["1"].metas.length, 2);
  send({ type: "presence_diff", joins: {}, leaves: members(meta("1", "a", { reason: "closed" })) });
  assert.equal(of("leave").length, 0);
  assert.deepEqual(sock.members()["1"].metas.map((m) => m.ref), ["a2"]);
});

test("the last meta leaving is a member leave, with its reason", () => {
  const { sock, of, send } = joined();
  send({ type: "presence_diff", joins: {}, leaves: members(meta("2", "b", { reason: "timeout" })) });
  const [leave] = of("leave");
  assert.equal(leave.key, "2");
  assert.equal(leave.reason, "timeout");
  assert.equal(leave.room, "lobby");
  assert.deepEqual(Object.keys(sock.members()), ["1"]);
});

for (const reason of ["update", "replaced"]) {
  test(`a leave with reason "${reason}" re-added in the same diff is no member leave`, () => {
    const { sock, of, send } = joined();
    const before = of("join").length;
    send({
      type: "presence_diff",
      joins: members(meta("2", "b2", { visible: false })),
      leaves: members(meta("2", "b", { reason })),
    });
    assert.equal(of("leave").length, 0);
    assert.equal(of("join").length, before);
    assert.deepEqual(sock.members()["2"].metas, [meta("2", "b2", { visible: false })]);
    assert.equal(of("presence").at(-1).members["2"].metas[0].visible, false);
  });
}

test("leaves are matched by ref, not by session", () => {
  const { sock, send } = joined();
  // Same session, new version: the old ref leaves, the new one stays.
  send({ type: "presence_diff", joins: members(meta("1", "a-v2", { session: "s-a" })), leaves: members(meta("1", "a", { session: "s-a", reason: "update" })) });
  assert.deepEqual(sock.members()["1"].metas.map((m) => m.ref), ["a-v2"]);
});

test("a join with a ref already held does not duplicate the meta", () => {
  const { sock, send } = joined();
  send({ type: "presence_diff", joins: members(meta("1", "a")), leaves: {} });
  assert.equal(sock.members()["1"].metas.length, 1);
});

test("a leave of an unknown key or ref is ignored", () => {
  const { sock, of, send } = joined();
  send({ type: "presence_diff", joins: {}, leaves: members(meta("9", "z", { reason: "closed" }), meta("1", "nope", { reason: "closed" })) });
  assert.equal(of("leave").length, 0);
  assert.deepEqual(Object.keys(sock.members()).sort(), ["1", "2"]);
});

test("a fresh presence_state after a reconnect resyncs: gone members leave, new ones join", () => {
  const { sock, of, ws, clock, open } = joined();
  ws().serverClose(1012);
  clock.tick(1000);
  const w = open();
  w.serverSend({ type: "presence_state", room: "lobby", members: members(meta("1", "a9"), meta("4", "d")) });
  assert.deepEqual(of("leave").map((e) => [e.key, e.reason]), [["2", "resync"]]);
  assert.deepEqual(of("join").slice(2).map((e) => e.key), ["4"]);
  assert.deepEqual(Object.keys(sock.members()).sort(), ["1", "4"]);
});

test("rooms are kept apart", () => {
  const { sock, w } = joined();
  w.serverSend({ type: "presence_state", room: "other", members: members(meta("7", "x")) });
  assert.deepEqual(Object.keys(sock.members("other")), ["7"]);
  assert.deepEqual(Object.keys(sock.members("lobby")).sort(), ["1", "2"]);
  assert.deepEqual(sock.members("nowhere"), {});
});

test("the members handed to listeners are not changed by later diffs", () => {
  const { of, send } = joined();
  const first = of("presence")[0].members;
  send({ type: "presence_diff", joins: {}, leaves: members(meta("2", "b", { reason: "closed" })) });
  assert.deepEqual(Object.keys(first).sort(), ["1", "2"]);
});
