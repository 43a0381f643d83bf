// Test doubles for the client: a clock with timers, a WebSocket, and a page (window, document).
// Not a test file: node --test only runs *.test.mjs here.
import HeartbeatSocket from "../../heartbeat_app/static/heartbeat_app/heartbeat.mjs";

export { HeartbeatSocket };

/** Timers on a fake clock. tick() runs them in order; jump() moves time and runs nothing. */
export class FakeClock {
  constructor(start = 1_000_000) {
    this.t = start;
    this.timers = new Map();
    this.seq = 0;
    this.align = 0; // > 0: timers fire only on multiples of this (a hidden tab's 1 Hz budget)
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => {
      const id = ++this.seq;
      let due = this.t + Math.max(0, ms || 0);
      if (this.align) due = Math.ceil(due / this.align) * this.align;
      this.timers.set(id, { fn, due });
      return id;
    };
    this.clearTimeout = (id) => { this.timers.delete(id); };
  }

  /** Advance `ms`, running every timer that falls due, each at its own time. */
  tick(ms = 0) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.due <= end && (next === null || timer.due < next[1].due)) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].due);
      next[1].fn();
    }
    this.t = end;
  }

  /** A frozen page or a sleeping machine: time passes and no timer runs. */
  jump(ms) { this.t += ms; }
}

/** A fresh fake WebSocket class with its own list of instances. */
export function fakeWebSocketClass() {
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    static instances = [];

    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closeCalls = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      FakeWebSocket.instances.push(this);
    }

    send(data) {
      if (this.readyState === 0) throw new Error("InvalidStateError: still CONNECTING");
      if (this.readyState === 1) this.sent.push(data);
    }

    close(code, reason) {
      this.closeCalls.push([code, reason]);
      if (this.readyState < 2) this.readyState = 2;
    }

    // Drivers: what the server and the network do.
    serverOpen() {
      this.readyState = 1;
      if (this.onopen) this.onopen({ type: "open" });
    }
    serverSend(msg) {
      const data = typeof msg === "string" || msg instanceof ArrayBuffer ? msg : JSON.stringify(msg);
      if (this.onmessage) this.onmessage({ type: "message", data });
    }
    serverClose(code = 1006, reason = "", wasClean = code !== 1006) {
      this.readyState = 3;
      if (this.onerror && code === 1006) this.onerror({ type: "error" });
      if (this.onclose) this.onclose({ type: "close", code, reason, wasClean });
    }

    /** Parsed frames sent by the client. */
    frames() { return this.sent.filter((s) => typeof s === "string").map((s) => { try { return JSON.parse(s); } catch { return s; } }); }
    pings() { return this.frames().filter((f) => f && f.type === "ping"); }
  }
  return FakeWebSocket;
}

export function fakeStorage(initial = {}) {
  const data = { ...initial };
  return {
    data,
    getItem: (k) => (k in data ? data[k] : null),
    setItem: (k, v) => { data[k] = String(v); },
    removeItem: (k) => { delete data[k]; },
  };
}

/** A window and a document: EventTargets with the few properties the client reads. */
export function fakePage({ protocol = "http:", host = "example.test", visible = true } = {}) {
  const window = new EventTarget();
  const document = new EventTarget();
  window.navigator = { onLine: true };
  window.location = { protocol, host };
  window.document = document;
  document.visibilityState = visible ? "visible" : "hidden";
  const listeners = [];
  for (const target of [window, document]) {
    const add = target.addEventListener.bind(target);
    target.addEventListener = (type, fn, opts) => { listeners.push(type); add(type, fn, opts); };
  }
  return {
    window,
    document,
    listeners,
    setVisible(v) {
      document.visibilityState = v ? "visible" : "hidden";
      document.dispatchEvent(new Event("visibilitychange"));
    },
    setOnline(v) {
      window.navigator.onLine = v;
      window.dispatchEvent(new Event(v ? "online" : "offline"));
    },
    fire(target, type, props = {}) {
      const ev = Object.assign(new Event(type), props);
      (target === "document" ? document : window).dispatchEvent(ev);
    },
  };
}

export const EVENT_TYPES = ["state", "open", "message", "close", "pong", "retry", "presence", "join", "leave", "drop",
  "broadcast", "count", "refused"];

/** A client wired to fakes, with every event recorded, and helpers to drive it. */
export function setup(options = {}, pageOptions = {}) {
  const clock = new FakeClock();
  const page = fakePage(pageOptions);
  const WS = fakeWebSocketClass();
  const storage = options.storage || fakeStorage();
  let draws = 0;
  const random = options.random || (() => { draws += 1; return 0.5; });
  const sock = new HeartbeatSocket(options.url || "/ws/rooms/lobby/", {
    WebSocket: WS,
    window: page.window,
    document: page.document,
    storage,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    ...options,
    random,
  });
  const events = [];
  for (const type of EVENT_TYPES) sock.on(type, (detail) => events.push({ type, ...detail, t: clock.t }));
  const ws = () => WS.instances[WS.instances.length - 1];
  const hello = (extra = {}) => ({
    type: "hello", session: "a".repeat(32), tab: sock.tab, interval_ms: 25000, timeout_ms: 10000,
    server_time: 0, version: 1, ...extra,
  });
  /** The server accepts the current socket and greets it. */
  const open = (extra = {}) => {
    const w = ws();
    w.serverOpen();
    w.serverSend(hello(extra));
    return w;
  };
  /** The server answers the client's latest ping. */
  const pong = (w = ws()) => {
    const ping = w.pings().at(-1);
    w.serverSend({ type: "pong", id: ping.id, server_time: 0 });
  };
  const of = (type) => events.filter((e) => e.type === type);
  return { sock, clock, page, WS, ws, open, pong, hello, events, of, storage };
}
