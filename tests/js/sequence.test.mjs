// Diff sequence numbers (docs/protocol.md#diff-sequence-numbers): a skipped `seq` of an
// origin asks for the room's state again, with a join of the room, at most once per
// resyncInterval.
import { test } from "node:test";
import assert from "node:assert/strict";

import { setup } from "./fakes.mjs";

const meta = (key, ref) => ({ session: `s-${ref}`, key, visible: true, online_at: 1, ref });
const members = (...metas) => {
  const out = {};
  for (const m of metas) (out[m.key] = out[m.key] || { metas: [] }).metas.push(m);
  return out;
};
/** Frames the client sent that are not heartbeats. */
const requests = (w) => w.frames().filter((f) => f && f.type !== "ping" && f.type !== "pong");
const JOIN = { type: "join", room: "lobby" };

function joined(seqs = { A: 4 }, options = {}) {
  const env = setup(options);
  const w = env.open();
  const state = (seqs, ...metas) => w.serverSend({ type: "presence_state", room: "lobby", members: members(...metas), count: metas.length, seqs });
  const diff = (origin, seq, joins = {}, leaves = {}) => w.serverSend({ type: "presence_diff", room: "lobby", joins, leaves, seq, origin });
  state(seqs, meta("1", "a"));
  return { ...env, w, state, diff };
}

test("diffs in sequence ask for nothing; a skipped seq asks for the state, and the diff still applies", () => {
  const { sock, w, diff } = joined();
  diff("A", 5, members(meta("2", "b")));
  diff("A", 6);
  assert.deepEqual(requests(w), []);
  diff("A", 8, members(meta("3", "c")));   // 7 was dropped on the way
  assert.deepEqual(requests(w), [JOIN]);
  assert.deepEqual(Object.keys(sock.members("lobby")).sort(), ["1", "2", "3"]);
});

test("the state that answers starts each sequence it names where it says", () => {
  const { sock, w, state, diff } = joined();
  diff("A", 9);
  assert.deepEqual(requests(w), [JOIN]);
  state({ A: 12 }, meta("1", "a"), meta("4", "d"));
  assert.deepEqual(Object.keys(sock.members("lobby")).sort(), ["1", "4"]);
  diff("A", 10);   // in flight before the state: older than it, and no gap
  diff("A", 13);
  diff("A", 14);
  assert.deepEqual(requests(w), [JOIN], "nothing more asked");
});

test("an origin the state does not name (another server process) starts at its first diff", () => {
  const { w, diff } = joined({ A: 0 });
  diff("B", 17);
  diff("B", 18);
  diff("A", 1);
  assert.deepEqual(requests(w), []);
  diff("B", 20);
  assert.deepEqual(requests(w), [JOIN]);
});

test("a second gap while the request is unanswered asks nothing more; after resyncInterval it asks again", () => {
  const { w, clock, diff } = joined();
  diff("A", 6);
  diff("A", 8);
  diff("A", 10);
  assert.deepEqual(requests(w), [JOIN]);
  clock.tick(4999);
  diff("A", 12);
  assert.deepEqual(requests(w), [JOIN]);
  clock.tick(1);
  diff("A", 14);   // the first request got no answer (the server's inbox may drop requests)
  assert.deepEqual(requests(w), [JOIN, JOIN]);
});

test("a gap soon after an answered resync asks once, when the interval is over", () => {
  const { w, clock, state, diff } = joined();
  diff("A", 6);
  state({ A: 6 }, meta("1", "a"));
  clock.tick(1000);
  diff("A", 8);
  diff("A", 10);
  assert.deepEqual(requests(w), [JOIN]);
  clock.tick(3999);
  assert.deepEqual(requests(w), [JOIN]);
  clock.tick(1);
  assert.deepEqual(requests(w), [JOIN, JOIN]);
  clock.tick(60000);
  assert.deepEqual(requests(w), [JOIN, JOIN], "no loop");
});

test("a state that comes before the held request is due cancels it", () => {
  const { w, clock, state, diff } = joined();
  diff("A", 6);
  state({ A: 6 }, meta("1", "a"));
  diff("A", 8);
  state({ A: 8 }, meta("1", "a"));   // a rebuild after an outage sends states too
  clock.tick(10000);
  assert.deepEqual(requests(w), [JOIN]);
});

test("a new connection does not compare with the sequences of the old one", () => {
  const { ws, clock, open, diff } = joined({ A: 3 });
  diff("A", 4);
  ws().serverClose(1012);
  clock.tick(1000);
  const w = open();
  w.serverSend({ type: "presence_diff", room: "lobby", joins: {}, leaves: {}, seq: 9, origin: "A" });
  assert.deepEqual(requests(w), []);
});

test("diffs without seq (a server of an older release) never ask", () => {
  const { w, diff } = joined({});
  diff(undefined, undefined, members(meta("2", "b")));
  w.serverSend({ type: "presence_diff", room: "lobby", joins: {}, leaves: {} });
  assert.deepEqual(requests(w), []);
});

test("a room left meanwhile is not asked for, even by a held request", () => {
  const { sock, w, clock, state, diff } = joined();
  diff("A", 6);
  state({ A: 6 }, meta("1", "a"));
  diff("A", 8);
  sock.leave("lobby");
  clock.tick(10000);
  assert.deepEqual(requests(w), [JOIN, { type: "leave", room: "lobby" }]);
});

test("resyncInterval is an option", () => {
  const { w, clock, diff } = joined({ A: 4 }, { resyncInterval: 100 });
  diff("A", 6);
  clock.tick(100);
  diff("A", 8);
  assert.deepEqual(requests(w), [JOIN, JOIN]);
});
