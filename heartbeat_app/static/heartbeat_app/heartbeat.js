/*
 * heartbeat.js: the browser client of heartbeat_app (wire protocol v1).
 *
 * A classic script that defines `window.HeartbeatSocket`; heartbeat.mjs re-exports the same
 * class as an ES module. No dependencies and no build step. Reference: docs/client.md.
 *
 *   const sock = new HeartbeatSocket("/ws/rooms/lobby/");
 *   sock.on("message", ({data}) => ...);   sock.send({type: "chat", text: "hi"});
 *   sock.join("dev");   sock.setPresence("dev", {status: "busy"});   sock.broadcast("dev", "typing", {});
 */
(function (root) {
  "use strict";

  // Loaded twice (a classic <script> and then the module, whose import runs this file again):
  // keep the first class, so instances and `instanceof` agree across both forms.
  if (root.HeartbeatSocket && root.HeartbeatSocket.backoff) return;

  var DEFAULTS = {
    protocols: undefined,      // WebSocket subprotocols
    connectTimeout: 10000,     // ms from `new WebSocket()` to the server's hello
    timeout: 10000,            // ms a ping may go unanswered when hello's timeout_ms is null
    probeTimeout: 5000,        // ms deadline of the probe sent on visible, online, resume
    lateSlack: 1000,           // a deadline timer this late means a frozen page: probe first
    baseDelay: 1000,           // backoff: attempt n waits U(minDelay, min(maxDelay, base * 2^n))
    minDelay: 500,
    maxDelay: 30000,
    maxAttempts: Infinity,     // failed attempts in a row before giving up
    maxQueue: 100,             // messages kept while disconnected (oldest dropped)
    maxQueueBytes: 65536,      // bytes kept while disconnected (oldest dropped)
    tab: true,                 // true: id kept in sessionStorage; a string: that id; false: none
    tabKey: "heartbeat_app.tab",
    anonKey: "heartbeat_app.anon",   // sessionStorage key of the token `identity` carries; null: not kept
    signalInterval: 100,       // ms between two broadcasts of one room and event (latest wins)
    resyncInterval: 5000,      // ms between two requests for a room's state after missed diffs
    reconnectWhileHidden: false,
    autoConnect: true,
    shouldReconnect: shouldReconnect,
    // Injected for tests; each defaults to the browser's own, looked up when used.
    WebSocket: undefined, window: undefined, document: undefined, storage: undefined,
    now: undefined, random: undefined, setTimeout: undefined, clearTimeout: undefined,
  };

  // Frames the client handles itself; everything else is a `message` event (a `broadcast`
  // only when it has the server's shape, see _own()).
  var OWN = {hello: 1, ping: 1, pong: 1, close: 1, identity: 1, presence_state: 1, presence_diff: 1,
             presence_count: 1};
  var TAB = /^[A-Za-z0-9_-]{1,64}$/;
  var OPEN = 1;
  // The server's limits on presence requests (docs/protocol.md), checked here so that a
  // mistake throws at the call instead of coming back as an error frame.
  var ROOM = /^[A-Za-z0-9_.-]{1,80}$/;
  var EVENT = /^[A-Za-z0-9_.:-]{1,64}$/;
  var MAX_STATE_BYTES = 1024;
  var MAX_DATA_BYTES = 4096;
  // Refusals after which the client stops asking for the room (see _refused()).
  var NOT_JOINED = {room_forbidden: 1, room_full: 1, too_many_tabs: 1};

  function checkRoom(room, method) {
    if (typeof room !== "string" || !ROOM.test(room)) {
      throw new TypeError(method + "(): a room is 1 to 80 letters, digits, '_', '-' or '.'");
    }
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  /** The close-code rule of docs/close-codes.md: false for codes after which retrying is useless. */
  function shouldReconnect(code) {
    if (code == null) return true;
    // 1000 and 1001 are not terminal: Daphne closes every socket with 1000 after 24 h, and
    // proxies close with 1000/1001 when they restart.
    if (code === 1008 || code === 4400 || code === 4401 || code === 4403) return false;
    return !(code >= 4500 && code <= 4999);
  }

  /**
   * Delay before reconnect attempt `attempt` (0 = first after a loss), in ms. Full jitter with a
   * floor: U(0, base) first, then U(minDelay, min(maxDelay, base * 2^n)). The spread is applied
   * after the cap, so clients stay spread out at the cap (socket.io's backo2 caps after jitter,
   * and every client then waits exactly the cap).
   */
  function backoff(attempt, random, o) {
    o = o || DEFAULTS;
    random = random || Math.random;
    if (attempt <= 0) return Math.round(random() * o.baseDelay);
    var cap = Math.min(o.maxDelay, o.baseDelay * Math.pow(2, Math.min(attempt, 30)));
    var floor = Math.min(o.minDelay, cap);
    return Math.round(floor + random() * (cap - floor));
  }

  /** The `retry_after_ms=N` hint of a close reason, or null. */
  function retryHint(reason) {
    var m = /retry_after_ms=(\d+)/.exec(reason || "");
    return m ? Number(m[1]) : null;
  }

  function utf8Length(s) {
    var n = 0;
    for (var i = 0; i < s.length; i++) {
      var c = s.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c < 0xdc00) { n += 4; i++; }
      else n += 3;
    }
    return n;
  }

  function byteSize(data) {
    if (typeof data === "string") return utf8Length(data);
    return data.byteLength != null ? data.byteLength : data.size || 0;
  }

  function isBinary(data) {
    return (typeof ArrayBuffer !== "undefined" &&
            (data instanceof ArrayBuffer || ArrayBuffer.isView(data))) ||
           (typeof Blob !== "undefined" && data instanceof Blob);
  }

  class HeartbeatSocket {
    /** Open a WebSocket to `url` (absolute, or a path on this page's host) and keep it alive. */
    constructor(url, options) {
      var o = this.options = Object.assign({}, DEFAULTS, options);
      this.url = url;
      this.session = null;        // session id from the latest hello
      this.memberKey = null;      // this client's member key, from the server's identity frame
      this.interval = null;       // ms between pings, from hello (null: heartbeats off)
      this.timeout = null;        // ms a ping may go unanswered, from hello
      this.rtt = null;            // latest round-trip time of a ping, ms
      this.attempt = 0;           // failed attempts since the last pong
      this.retryAt = null;        // when the pending reconnect is due (clock ms)
      this._state = "closed";
      this._listeners = {};
      this._ws = null;
      this._queue = [];
      this._queueBytes = 0;
      this._rooms = {};           // room -> {key: {metas}}: the member list ({} when count-only)
      this._counts = {};          // room -> number of members
      this._countOnly = {};       // room -> true: a big room, the server sends its count only
      this._joined = {};          // room -> true: asked for with join(), asked again on reconnect
      this._states = {};          // room -> the state of the latest setPresence(), re-sent on reconnect
      this._left = {};            // room -> true: left with leave(); stays left across reconnects
      this._signals = {};         // "room event" -> the throttle of broadcast()
      this._conn = null;          // what this connection was sent (see _newConnection())
      this._newConnection();
      this._pings = {};
      this._seq = 0;
      this._deadline = null;      // a frame must arrive by then (clock ms)
      this._connectBy = null;     // hello must arrive by then (clock ms)
      this._graced = false;
      this._hint = null;          // retry_after_ms from the server's close notice
      this._notBefore = null;     // no reconnect before then (a retry hint)
      this._timers = {};
      this._everOpen = false;
      this._stopped = true;
      this.tab = this._initialTab();
      this._anon = this._load(o.anonKey);   // the anonymous token the server issued, if any
      // Listeners are kept on the object so close() can remove exactly these.
      this._onVisibility = () => this._visibilityChanged();
      this._onWake = () => this._wake();
      this._onOffline = () => { if (!this._ws && this._state === "reconnecting") this._setState("offline"); };
      this._onPageHide = (ev) => this._pageHide(ev);
      this._onPageShow = (ev) => this._pageShow(ev);
      if (o.autoConnect) this.connect();
    }

    /** "connecting", "open", "reconnecting", "offline", "suspended" or "closed". */
    get state() { return this._state; }

    // Events -----------------------------------------------------------------

    /** Call `fn(detail)` on each `type` event; returns a function that removes it. */
    on(type, fn) {
      (this._listeners[type] = this._listeners[type] || []).push(fn);
      return () => this.off(type, fn);
    }

    /** Remove a listener added with on(). */
    off(type, fn) {
      var list = this._listeners[type];
      if (list) this._listeners[type] = list.filter((f) => f !== fn);
    }

    _emit(type, detail) {
      var list = (this._listeners[type] || []).slice();
      for (var i = 0; i < list.length; i++) {
        try {
          list[i].call(this, detail);
        } catch (err) {
          // A broken listener must not break the connection's state machine; rethrow it in a
          // task of its own so it still reaches the console and window.onerror.
          this._after(0, () => { throw err; });
        }
      }
    }

    // Public API ---------------------------------------------------------------

    /** Start (or restart after close()) with a fresh backoff. */
    connect() {
      this._stopped = false;
      this._listen(true);
      this.attempt = 0;
      this._notBefore = null;
      this._drop(4000, "reconnect");
      this._connect();
    }

    /** Drop the current connection, if any, and connect again at once. */
    reconnect() { this.connect(); }

    /**
     * Send a string, binary data, or a value sent as JSON. Returns true if it went out now;
     * false if it was queued until the next open (or dropped: closed, or the queue is full).
     */
    send(data) {
      if (typeof data !== "string" && !isBinary(data)) data = JSON.stringify(data);
      var ws = this._ws;
      if (this._state === "open" && ws && ws.readyState === OPEN) {
        ws.send(data);
        return true;
      }
      if (this._state === "closed") return false;
      // Bounded: an unbounded queue replays minutes of stale commands after a long outage
      // (reconnecting-websocket #110, #171). Oldest first out.
      var o = this.options;
      this._queue.push(data);
      this._queueBytes += byteSize(data);
      while (this._queue.length > o.maxQueue || this._queueBytes > o.maxQueueBytes) {
        var old = this._queue.shift();
        this._queueBytes -= byteSize(old);
        this._emit("drop", {data: old});
      }
      return false;
    }

    /** Close for good: no reconnect until connect(). */
    close(code, reason) {
      code = code == null ? 1000 : code;
      reason = reason || "";
      var wasStopped = this._stopped;
      this._stopped = true;
      this._listen(false);
      this._cancel("retry");
      this.retryAt = null;
      this._queue = [];
      this._queueBytes = 0;
      this._dropSignals(null);
      this._drop(code, reason);
      this._setState("closed");
      if (!wasStopped) this._emit("close", {code: code, reason: reason, wasClean: true, willReconnect: false});
    }

    /** The members of `room` ({key: {metas: [...]}}); with no room, of the only room. */
    members(room) {
      if (room == null) room = Object.keys(this._rooms)[0];
      return this._rooms[room] || {};
    }

    /** The number of members of `room` (with no room, of the only room), or null if unknown. */
    count(room) {
      if (room == null) room = Object.keys(this._rooms)[0];
      return room in this._counts ? this._counts[room] : null;
    }

    // Rooms, states and signals (docs/presence.md#presence-the-app-drives) -----------------

    /**
     * Be present in `room`, on this connection and on every later one. Returns true if the
     * request went out now, false if it goes out when the connection opens.
     */
    join(room) {
      checkRoom(room, "join");
      this._joined[room] = true;
      delete this._left[room];
      if (!this._isOpen()) return false;
      this._sendJoin(room);
      return true;
    }

    /**
     * Stop being present in `room` and forget its members and state. Returns true if the
     * request went out now; while disconnected there is nothing to leave, and the room is
     * not joined again.
     */
    leave(room) {
      checkRoom(room, "leave");
      delete this._joined[room];
      delete this._states[room];
      this._left[room] = true;
      this._dropSignals(room);
      this._resynced(room);
      delete this._conn.seqs[room];
      if (room in this._rooms) this._forget(room);
      if (!this._isOpen()) return false;
      this._conn.leaving[room] = true;
      this._raw({type: "leave", room: room});
      return true;
    }

    /**
     * Set this tab's `state` (a plain object, at most 1 KiB as JSON) in `room`; the room sees
     * it in this tab's meta. Kept and sent again after a reconnect. True if sent now.
     */
    setPresence(room, state) {
      checkRoom(room, "setPresence");
      if (!isObject(state)) throw new TypeError("setPresence(): the state must be a plain object");
      var text = JSON.stringify(state);
      if (utf8Length(text) > MAX_STATE_BYTES) {
        throw new RangeError("setPresence(): the state is limited to " + MAX_STATE_BYTES + " bytes as JSON");
      }
      // A copy: what is re-sent after a reconnect is what was set, not a later mutation.
      this._states[room] = JSON.parse(text);
      if (!this._isOpen()) return false;
      this._sendState(room);
      return true;
    }

    /**
     * Send an ephemeral signal (`event`, with `data`) to the others in `room`. Never queued:
     * while disconnected it is dropped. At most one per `signalInterval` per room and event;
     * inside that window the latest replaces the earlier and goes out when the window ends.
     * True if sent now, false if held for the window or dropped.
     */
    broadcast(room, event, data) {
      checkRoom(room, "broadcast");
      if (typeof event !== "string" || !EVENT.test(event)) {
        throw new TypeError("broadcast(): an event is 1 to 64 letters, digits or '_.:-'");
      }
      if (data === undefined) data = {};
      if (utf8Length(JSON.stringify(data)) > MAX_DATA_BYTES) {
        throw new RangeError("broadcast(): the data is limited to " + MAX_DATA_BYTES + " bytes as JSON");
      }
      if (!this._isOpen()) return false;
      // The server keeps the latest signal of a window too (PRESENCE_SIGNAL_RATE, 10/s), but
      // every frame also spends the session's rate limit, whose overflow closes the socket
      // (4429): a typing signal per keystroke must not get that far.
      var key = room + " " + event, now = this._now(), sig = this._signals[key];
      var gap = this.options.signalInterval;
      if (sig && now - sig.at < gap) {
        sig.data = data;
        if (sig.timer == null) {
          sig.timer = this._after(sig.at + gap - now, () => {
            sig.timer = null;
            if (this._signals[key] !== sig || !this._isOpen()) return;
            sig.at = this._now();
            this._raw({type: "broadcast", room: room, event: event, data: sig.data});
          });
        }
        return false;
      }
      this._signals[key] = {room: room, at: now, data: data, timer: null};
      this._raw({type: "broadcast", room: room, event: event, data: data});
      return true;
    }

    _isOpen() {
      return this._state === "open" && !!this._ws && this._ws.readyState === OPEN;
    }

    _sendJoin(room) {
      this._conn.joined[room] = true;
      this._raw({type: "join", room: room});
      // Right behind the join: the server serves a session's requests in order, so the room
      // never sees this tab without its state.
      if (this._states[room]) this._sendState(room);
    }

    _sendState(room) {
      this._conn.stated[room] = true;
      this._raw({type: "presence_update", room: room, state: this._states[room]});
    }

    /** A fresh connection: nothing joined, left or stated on it yet; held signals dropped. */
    _newConnection() {
      this._dropSignals(null);
      if (this._conn) for (var room in this._conn.resync) this._resynced(room);
      // seqs: room -> {origin: the seq of the latest diff}, per connection: diff sequences
      // run per (room, server process), and a new connection starts from its states.
      this._conn = {joined: {}, stated: {}, leaving: {}, resync: {}, seqs: {}};
    }

    /**
     * Ask for `room`'s state again: joining a room one is in resends it (docs/presence.md).
     * At most once per `resyncInterval`: a request still unanswered then (the server drops
     * requests beyond its inbox) may go again; a gap seen sooner after an answer asks once
     * the interval is over, so a server that keeps dropping diffs is not asked in a loop.
     */
    _resync(room) {
      var conn = this._conn, r = conn.resync[room], now = this._now();
      var every = this.options.resyncInterval;
      if (!this._isOpen()) return;   // a new connection gets every state anyway
      if (r && now - r.at < every) {
        if (!r.pending && r.timer == null) {
          r.timer = this._after(r.at + every - now, () => {
            r.timer = null;
            if (this._conn === conn && conn.resync[room] === r && !this._left[room]) this._resync(room);
          });
        }
        return;
      }
      this._resynced(room);
      conn.resync[room] = {at: now, pending: true, timer: null};
      this._raw({type: "join", room: room});
    }

    /** A state of `room` arrived (or the room is left): no resync is waiting for one. */
    _resynced(room) {
      var r = this._conn.resync[room];
      if (!r) return;
      r.pending = false;
      if (r.timer != null) (this.options.clearTimeout || root.clearTimeout)(r.timer);
      r.timer = null;
    }

    /**
     * Track a diff's place in its sequence; true if diffs are missing before it. The server
     * numbers a room's diffs per process (`origin`) before the channel layer, which drops
     * messages to a client over its capacity (docs/protocol.md#diff-sequence-numbers).
     */
    _gap(room, msg) {
      var origin = msg.origin, seq = msg.seq;
      if (typeof origin !== "string" || typeof seq !== "number") return false;   // an older server
      var seqs = this._conn.seqs[room] || (this._conn.seqs[room] = {});
      var last = seqs[origin];
      if (last != null && seq <= last) return false;   // older than the state that came first
      seqs[origin] = seq;
      // An origin not seen since the room's state (another process, or a restarted one)
      // starts here: what came before it is in the state.
      return last != null && seq > last + 1;
    }

    _dropSignals(room) {
      var clear = this.options.clearTimeout || root.clearTimeout;
      for (var key in this._signals) {
        var sig = this._signals[key];
        if (room != null && sig.room !== room) continue;
        if (sig.timer != null) clear(sig.timer);
        delete this._signals[key];
      }
    }

    // Environment ----------------------------------------------------------------

    _now() { return this.options.now ? this.options.now() : Date.now(); }
    _random() { return (this.options.random || Math.random)(); }
    _win() { return this.options.window !== undefined ? this.options.window : root.window; }
    _doc() {
      if (this.options.document !== undefined) return this.options.document;
      var w = this._win();
      return w ? w.document : undefined;
    }
    _hidden() {
      var d = this._doc();
      return !!d && d.visibilityState === "hidden";
    }
    _offline() {
      var w = this._win();
      return !!(w && w.navigator && w.navigator.onLine === false);
    }

    // Timers are looked up at call time, so that fake timers installed after load still apply.
    _after(ms, fn) {
      var set = this.options.setTimeout || root.setTimeout;
      return set(fn, ms);
    }
    _start(name, ms, fn) {
      this._cancel(name);
      this._timers[name] = this._after(Math.max(0, ms), () => { this._timers[name] = null; fn(); });
    }
    _cancel(name) {
      var t = this._timers[name];
      if (t != null) (this.options.clearTimeout || root.clearTimeout)(t);
      this._timers[name] = null;
    }

    _listen(on) {
      if (on === this._listening) return;
      this._listening = on;
      var w = this._win(), d = this._doc();
      var m = on ? "addEventListener" : "removeEventListener";
      if (d && d[m]) {
        d[m]("visibilitychange", this._onVisibility);
        // Page Lifecycle: a frozen tab gets `resume` and Chrome 149 does not always follow it
        // with visibilitychange (phoenix.js), so deadlines are re-checked here too.
        d[m]("resume", this._onWake);
      }
      if (w && w[m]) {
        w[m]("online", this._onWake);
        w[m]("offline", this._onOffline);
        // Back-forward cache: pagehide/pageshow, never unload/beforeunload, which make a page
        // ineligible for the cache in several browsers.
        w[m]("pagehide", this._onPageHide);
        w[m]("pageshow", this._onPageShow);
      }
    }

    _initialTab() {
      var o = this.options;
      if (o.tab === false) return null;
      if (typeof o.tab === "string") return o.tab;
      var store = this._storage(), tab = null, live = null;
      try {
        tab = store && store.getItem(o.tabKey);
        live = store && store.getItem(o.tabKey + ".live");
      } catch (e) { tab = null; }
      // "Duplicate tab" copies sessionStorage into the new tab, id included, while the
      // original is still open; the server would then replace the original's presence with
      // the copy's. A page marks its id live while it is shown and not live on pagehide, so
      // a reload finds it not live and keeps it, and a duplicate finds it live and makes its
      // own. Sockets of the same page share the page's claim (kept on its window).
      var win = this._win();
      if (live === "1" && !(win && win.__heartbeatAppTab === tab)) tab = null;
      if (!tab || !TAB.test(tab)) {
        var abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
        tab = "";
        for (var i = 0; i < 16; i++) tab += abc.charAt(Math.floor(this._random() * 64));
        this._saveTab(tab);
      }
      if (win) win.__heartbeatAppTab = tab;
      this._markTab(true);
      return tab;
    }

    _storage() {
      if (this.options.storage !== undefined) return this.options.storage;
      // Reading window.sessionStorage throws (SecurityError) when storage is blocked, e.g. in
      // a sandboxed iframe or with cookies disabled; the client then works without a saved id.
      try { return this._win().sessionStorage; } catch (e) { return null; }
    }

    _load(key) {
      if (!key) return null;
      try { var s = this._storage(); return (s && s.getItem(key)) || null; } catch (e) { return null; }
    }

    _saveTab(tab) {
      if (this.options.tab !== true) return;
      try { var s = this._storage(); if (s) s.setItem(this.options.tabKey, tab); } catch (e) { /* quota or blocked */ }
      this._markTab(true);
    }

    _markTab(live) {
      if (this.options.tab !== true) return;
      try {
        var s = this._storage();
        if (s) s.setItem(this.options.tabKey + ".live", live ? "1" : "0");
      } catch (e) { /* quota or blocked */ }
    }

    _url() {
      var u = typeof this.url === "function" ? this.url() : String(this.url);
      var loc = this._win() && this._win().location;
      if (/^https?:/i.test(u)) u = u.replace(/^http/i, "ws");
      else if (!/^wss?:/i.test(u) && loc) {
        u = (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + (u.charAt(0) === "/" ? "" : "/") + u;
      }
      if (this.tab) u += (u.indexOf("?") >= 0 ? "&" : "?") + "tab=" + encodeURIComponent(this.tab);
      // Present, even empty, `anon` asks the server for a token (identity) to present later.
      if (this.options.anonKey) u += (u.indexOf("?") >= 0 ? "&" : "?") + "anon=" + encodeURIComponent(this._anon || "");
      return u;
    }

    // Connection ------------------------------------------------------------------

    _setState(state) {
      var previous = this._state;
      if (state === previous) return;
      this._state = state;
      this._emit("state", {state: state, previous: previous});
    }

    _connect() {
      this._cancel("retry");
      this.retryAt = null;
      this._hint = null;
      var WS = this.options.WebSocket || root.WebSocket;
      var ws;
      this._newConnection();
      try {
        ws = new WS(this._url(), this.options.protocols);
      } catch (err) {
        // A malformed URL is the caller's mistake: say so at once.
        if (!this._everOpen && this.attempt === 0) throw err;
        this._lost(1006, String(err && err.message || err), false);
        return;
      }
      this._ws = ws;
      this._pings = {};
      this._deadline = null;
      this._graced = false;
      this._connectBy = this._now() + this.options.connectTimeout;
      ws.onmessage = (ev) => { if (ws === this._ws) this._frame(ev.data); };
      ws.onclose = (ev) => { if (ws === this._ws) this._closed(ev); };
      // `error` carries no detail by spec and is always followed by `close`.
      ws.onerror = null;
      this._setState(this._everOpen ? "reconnecting" : "connecting");
      this._arm();
    }

    _detach(ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }

    /** Close the current socket, if any, and forget it: none of its events reach us again. */
    _drop(code, reason) {
      var ws = this._ws;
      this._stopHeartbeat();
      if (!ws) return;
      this._ws = null;
      this._detach(ws);
      // close() on a CONNECTING socket fails the handshake instead of letting a late open leak
      // a server session (reconnecting-websocket #183); Chromium accepts it.
      try { ws.close(code, reason); } catch (e) { /* already closing */ }
    }

    _stopHeartbeat() {
      this._cancel("ping");
      this._cancel("deadline");
      this._deadline = null;
      this._connectBy = null;
    }

    /** Give up on a socket that missed a deadline, without waiting for its `close`. */
    _abandon(code, reason) {
      // On a dead peer Chromium fires `close` 60 s after ws.close(); so never wait for it.
      this._drop(code === 4408 ? 4408 : 1000, reason);
      this._lost(code, reason, false);
    }

    _closed(ev) {
      var ws = this._ws;
      this._ws = null;
      this._detach(ws);
      this._stopHeartbeat();
      this._lost(ev.code, ev.reason || "", !!ev.wasClean);
    }

    _lost(code, reason, wasClean) {
      this._stopHeartbeat();
      var o = this.options;
      // Daphne drops close reasons, so the server sends the hint in a frame just before.
      var hint = this._hint != null ? this._hint : retryHint(reason);
      this._hint = null;
      if (this._stopped) return;
      if (!o.shouldReconnect(code) || this.attempt >= o.maxAttempts) {
        this._stopped = true;
        this._listen(false);
        this._setState("closed");
        this._emit("close", {code: code, reason: reason, wasClean: wasClean, willReconnect: false});
        return;
      }
      // A hint is a minimum. The server has already spaced out the clients it sent away
      // (each gets a slot of its own), so the wait is the hint plus the first attempt's
      // jitter, U(0, baseDelay), not the backoff grown by the failures before it.
      var delay = hint ? hint + backoff(0, () => this._random(), o)
        : backoff(this.attempt, () => this._random(), o);
      var now = this._now();
      this._notBefore = hint ? now + hint : null;
      this.attempt += 1;
      this.retryAt = now + delay;
      this._start("retry", delay, () => this._due());
      this._emit("close", {code: code, reason: reason, wasClean: wasClean, willReconnect: true, delay: delay});
      this._emit("retry", {attempt: this.attempt, delay: delay, at: this.retryAt});
      this._setState(this._offline() ? "offline" : "reconnecting");
    }

    /** The retry timer fired, or a lifecycle event says now is a good time. */
    _due() {
      this._cancel("retry");
      this.retryAt = null;
      if (this._stopped || this._ws) return;
      // Hidden pages do not reconnect: mobile browsers freeze their sockets anyway (phoenix
      // #6534); becoming visible reconnects at once.
      if (this._hidden() && !this.options.reconnectWhileHidden) return this._setState("suspended");
      if (this._offline()) {
        // navigator.onLine === false is reliable; `online` reconnects. The slow poll covers an
        // `online` event that never came.
        this._start("retry", this.options.maxDelay, () => this._due());
        return this._setState("offline");
      }
      this._connect();
    }

    // Heartbeat ---------------------------------------------------------------------

    /** Arm one timer for the nearest deadline; the timestamps, not the timer, decide. */
    _arm() {
      var next = null;
      if (this._connectBy != null) next = this._connectBy;
      if (this._deadline != null && (next == null || this._deadline < next)) next = this._deadline;
      if (next == null) return this._cancel("deadline");
      this._start("deadline", next - this._now(), () => this._check());
    }

    /** Enforce the deadlines against the clock: timers run late in hidden or frozen tabs. */
    _check() {
      if (!this._ws) return;
      var now = this._now();
      if (this._connectBy != null && now >= this._connectBy) return this._abandon(1006, "connect timeout");
      if (this._deadline != null && now >= this._deadline) {
        // Hidden tabs run timers at 1 Hz or less and may be frozen: a missed deadline there
        // proves little, so it is not enforced (matrix-os #559); becoming visible probes.
        if (this._hidden()) return;
        if (!this._graced && now - this._deadline > this.options.lateSlack) {
          // The timer fired long after the deadline: the page or machine was asleep, and the
          // answer may be queued behind this timer. One short probe decides.
          this._graced = true;
          return this._ping(this.options.probeTimeout, true);
        }
        return this._abandon(4408, "heartbeat timeout");
      }
      this._arm();
    }

    _raw(obj) {
      try { this._ws.send(JSON.stringify(obj)); } catch (e) { /* the close event follows */ }
    }

    /** Send a ping with a deadline `within` ms; a probe may tighten a pending deadline. */
    _ping(within, probe) {
      if (!this._ws || this._state !== "open") return;
      var now = this._now(), id = ++this._seq;
      this._pings[id] = now;
      var ping = {type: "ping", id: id, visible: !this._hidden()};
      // The round trip this client measured last: the server only measures its own probes,
      // which a client that pings by itself never needs.
      if (this.rtt != null) ping.rtt_ms = Math.round(this.rtt * 10) / 10;
      this._raw(ping);
      var due = now + within, d = this._deadline;
      if (d == null) d = due;
      else if (d <= now) d = probe ? due : d;   // a missed deadline stays missed, unless probed
      else d = Math.min(d, due);
      this._deadline = d;
      // The next regular ping; a pong re-schedules it from the network callback.
      if (this.interval != null) this._start("ping", this.interval, () => this._ping(this.timeout));
      this._arm();
    }

    _frame(data) {
      // Any inbound frame is liveness (a busy server may answer late but stream other frames:
      // rails #42336).
      this._deadline = null;
      this._graced = false;
      this._arm();
      var msg = null;
      if (typeof data === "string") {
        try { msg = JSON.parse(data); } catch (e) { msg = null; }
      }
      if (!isObject(msg) || !this._own(msg)) {
        // Refusals stay messages too, as they were before rooms could be joined.
        if (isObject(msg) && msg.type === "error" && typeof msg.room === "string") this._refused(msg);
        return this._emit("message", {data: msg !== null && typeof data === "string" ? msg : data, raw: data});
      }
      switch (msg.type) {
        case "hello": return this._hello(msg);
        case "ping":
          // A server probe: answer at once, from this network callback.
          return this._raw({type: "pong", id: msg.id, visible: !this._hidden()});
        case "pong": return this._pong(msg);
        case "identity": return this._identity(msg);
        case "close":
          this._hint = typeof msg.retry_after_ms === "number" ? msg.retry_after_ms : null;
          return;
        case "broadcast":
          if (this._left[msg.room]) return;   // in flight when the leave went out
          return this._emit("broadcast", {room: msg.room, event: msg.event, from: msg.from, data: msg.data});
        case "broadcasts":
          // A big room's signals of one delivery pass, in one frame (docs/protocol.md):
          // one broadcast event each, as if they had come one by one.
          if (this._left[msg.room]) return;
          for (var i = 0; i < msg.signals.length; i++) {
            var s = msg.signals[i];
            if (!isObject(s) || typeof s.event !== "string") continue;
            this._emit("broadcast", {room: msg.room, event: s.event, from: s.from, data: s.data});
          }
          return;
        default: return this._presence(msg);
      }
    }

    _own(msg) {
      if (OWN[msg.type]) return true;
      // The server's signal carries room and event (a batch: room and signals); an app's own
      // "broadcast" frame without them stays a `message`, as before.
      if (msg.type === "broadcasts") return typeof msg.room === "string" && Array.isArray(msg.signals);
      return msg.type === "broadcast" && typeof msg.room === "string" && typeof msg.event === "string";
    }

    _hello(msg) {
      var ws = this._ws;
      this._connectBy = null;
      this._arm();
      this.session = msg.session || null;
      this.interval = msg.interval_ms != null ? msg.interval_ms : null;
      this.timeout = msg.timeout_ms != null ? msg.timeout_ms : this.options.timeout;
      if (msg.tab && TAB.test(msg.tab) && msg.tab !== this.tab) {
        this.tab = msg.tab;
        this._saveTab(msg.tab);
      }
      this._everOpen = true;
      this._setState("open");
      this._emit("open", {session: this.session, tab: this.tab, interval: this.interval, timeout: this.timeout});
      if (ws !== this._ws || this._state !== "open") return;   // a listener closed it
      // The rooms of join() again, each with its latest state (a listener may have joined
      // some already), before the queue, which may hold frames about them.
      for (var room in this._joined) if (!this._conn.joined[room]) this._sendJoin(room);
      // Queued sends go after the open listeners, so their subscribe frames come first.
      var q = this._queue;
      this._queue = [];
      this._queueBytes = 0;
      for (var i = 0; i < q.length; i++) ws.send(q[i]);
      // The first ping at once: reports visibility, measures RTT, and its pong proves the new
      // connection works, which resets the backoff.
      if (this.interval != null) this._ping(this.timeout);
    }

    /**
     * The server's word on who this client is. An anonymous key rests on a token the server
     * signed; presenting it again (`?anon=`) keeps the key across reconnects and reloads. The
     * tab id cannot do that: anyone can send anyone's (docs/protocol.md#identity).
     */
    _identity(msg) {
      if (typeof msg.key === "string") this.memberKey = msg.key;
      if (typeof msg.token !== "string" || !msg.token) return;
      this._anon = msg.token;
      var key = this.options.anonKey;
      try { var s = key && this._storage(); if (s) s.setItem(key, msg.token); } catch (e) { /* quota or blocked */ }
    }

    _pong(msg) {
      var sent = this._pings[msg.id];
      if (sent == null) return;
      for (var id in this._pings) if (Number(id) <= msg.id) delete this._pings[id];
      this.rtt = this._now() - sent;
      this.attempt = 0;
      this._notBefore = null;
      // Scheduled from the network callback: Chrome's intensive throttling of hidden tabs hits
      // chains of timers set from timers, not a timer set from a message (SignalR #31626).
      if (this.interval != null) this._start("ping", this.interval, () => this._ping(this.timeout));
      this._emit("pong", {rtt: this.rtt, id: msg.id, serverTime: msg.server_time});
    }

    // Lifecycle ----------------------------------------------------------------------

    _visibilityChanged() {
      if (this._hidden()) {
        // Tell the server at once, so other members see this tab as hidden.
        if (this._state === "open") this._ping(this.timeout);
      } else {
        this._wake();
      }
    }

    /** Visible, online, resume, pageshow: probe an open socket, or stop waiting to reconnect. */
    _wake() {
      if (this._stopped) return;
      if (this._state === "open") return this._ping(this.options.probeTimeout, true);
      if (this._ws) return this._check();
      var now = this._now();
      if (this._notBefore != null && now < this._notBefore) {
        // A retry hint from the server still applies.
        this.retryAt = this._notBefore;
        this._start("retry", this._notBefore - now, () => this._due());
        return this._setState("reconnecting");
      }
      this._due();
    }

    _pageHide(ev) {
      this._markTab(false);
      // Not persisted: the page is going away for good; the browser closes the socket with
      // 1001 and the server's leave grace covers a reload.
      if (!ev || !ev.persisted || this._stopped) return;
      this._cancel("retry");
      this.retryAt = null;
      this._drop(1000, "pagehide");
      this._setState("suspended");
    }

    _pageShow(ev) {
      this._markTab(true);
      if (ev && ev.persisted && this._state === "suspended" && !this._ws) {
        // Restored from the back-forward cache. The old socket's readyState still read OPEN
        // here in Chromium 156 before its close arrived, so it was dropped at pagehide.
        this.attempt = 0;
        return this._due();
      }
      this._wake();
    }

    // Presence ------------------------------------------------------------------------

    _presence(msg) {
      var room = msg.room, conn = this._conn, key;
      if (typeof room !== "string") return;
      if (this._left[room]) {
        // A room the app left. Its frames were in flight when the leave went out, or the
        // server put this new connection in it again (a room of the connect URL, joined on
        // accept): then leave it again, once.
        if (msg.type === "presence_state" && !conn.leaving[room] && this._isOpen()) {
          conn.leaving[room] = true;
          this._raw({type: "leave", room: room});
        }
        return;
      }
      if (msg.type === "presence_count") {
        // Replaces the diffs of a room above PRESENCE_FULL_LIST_MAX members: a list kept so
        // far would go stale, so the room becomes count-only here too.
        if (!(room in this._rooms) || typeof msg.count !== "number") return;   // no state yet
        return this._apply(msg, {}, msg.count, {});
      }
      if (msg.type === "presence_state") {
        this._resynced(room);
        // Where each sequence is that the state includes; others start at their next diff.
        var seqs = conn.seqs[room] = {};
        if (isObject(msg.seqs)) {
          for (key in msg.seqs) if (typeof msg.seqs[key] === "number") seqs[key] = msg.seqs[key];
        }
        // A room the server joined on accept gets its state here; the rooms of join() got
        // theirs right behind the join.
        if (this._states[room] && !conn.stated[room] && this._isOpen()) this._sendState(room);
        if (!isObject(msg.members)) return this._apply(msg, {}, msg.count, {});
      } else if (this._countOnly[room]) {
        // A diff for a count-only room: it shrank back under the limit, and the server went
        // back to diffs, which apply to a list this client does not have: ask for its state.
        return this._resync(room);
      }
      // A diff after missed ones still applies (what it says is true); the state fixes the rest.
      var missed = msg.type === "presence_diff" && this._gap(room, msg);
      var before = this._rooms[room] || {}, next = {}, leaveMetas = {};
      if (msg.type === "presence_state") {
        var members = msg.members;
        for (key in members) next[key] = {metas: ((members[key] || {}).metas || []).slice()};
        for (key in before) if (!next[key]) leaveMetas[key] = before[key].metas;
      } else {
        for (key in before) next[key] = {metas: before[key].metas.slice()};
        // Joins first, then leaves by ref (docs/presence.md): an update or a replacement is a
        // leave and a join of the same key in one diff, and must not look like a member leaving.
        var joins = msg.joins || {}, leaves = msg.leaves || {};
        for (key in joins) {
          var add = joins[key].metas || [], refs = {};
          add.forEach((m) => { refs[m.ref] = 1; });
          var kept = next[key] ? next[key].metas.filter((m) => !refs[m.ref]) : [];
          next[key] = {metas: kept.concat(add)};
        }
        for (key in leaves) {
          if (!next[key]) continue;
          var gone = leaves[key].metas || [], out = {};
          gone.forEach((m) => { out[m.ref] = 1; });
          var left = next[key].metas.filter((m) => !out[m.ref]);
          if (left.length) next[key] = {metas: left};
          else { delete next[key]; leaveMetas[key] = gone; }
        }
      }
      this._apply(msg, next, null, leaveMetas);
      if (missed) this._resync(room);
    }

    /** Install a room's new list (`count` null) or count (`next` empty), and tell listeners. */
    _apply(msg, next, count, leaveMetas) {
      var room = msg.room, key;
      var before = this._rooms[room] || {}, wasCountOnly = !!this._countOnly[room];
      var countOnly = count != null;
      var oldCount = room in this._counts ? this._counts[room] : null;
      if (!countOnly) count = Object.keys(next).length;
      this._rooms[room] = next;
      this._counts[room] = count;
      if (countOnly) this._countOnly[room] = true;
      else delete this._countOnly[room];
      // Member events compare two lists. A room turning count-only loses its list, but
      // nobody left; a room back from count-only has no earlier list to compare with.
      if (!countOnly && !wasCountOnly) {
        for (key in next) {
          if (!before[key]) this._emit("join", {room: room, key: key, metas: next[key].metas});
        }
        for (key in leaveMetas) {
          if (!before[key]) continue;
          var metas = leaveMetas[key], last = metas[metas.length - 1];
          // From a fresh presence_state the real reason is unknown: the member left while this
          // client was away.
          var reason = msg.type === "presence_state" ? "resync" : (last && last.reason) || "closed";
          this._emit("leave", {room: room, key: key, reason: reason, metas: metas});
        }
      }
      // A presence_count changes the list only when it ends one.
      if (msg.type !== "presence_count" || !wasCountOnly) {
        this._emit("presence", {room: room, members: next, count: count, countOnly: countOnly});
      }
      if (count !== oldCount || countOnly !== wasCountOnly) {
        this._emit("count", {room: room, count: count, countOnly: countOnly});
      }
    }

    /** The room's list and count are gone (left, or refused): listeners see it empty. */
    _forget(room) {
      this._resynced(room);
      delete this._conn.seqs[room];
      delete this._rooms[room];
      delete this._counts[room];
      delete this._countOnly[room];
      this._emit("presence", {room: room, members: {}, count: null, countOnly: false});
    }

    /** An error frame about a room: a request was refused; the connection stays open. */
    _refused(msg) {
      var room = msg.room;
      if (NOT_JOINED[msg.code]) {
        // Not in the room: not asked for again after a reconnect, where the answer would be
        // the same; whatever was known of the room is stale.
        delete this._joined[room];
        delete this._states[room];
        if (room in this._rooms) this._forget(room);
      } else if (msg.code === "invalid_state") {
        // The server kept the previous state; sent again after a reconnect, this one would be
        // refused again.
        delete this._states[room];
      }
      this._emit("refused", {room: room, code: msg.code, detail: msg.detail});
    }
  }

  HeartbeatSocket.backoff = backoff;
  HeartbeatSocket.shouldReconnect = shouldReconnect;
  HeartbeatSocket.retryHint = retryHint;
  HeartbeatSocket.DEFAULTS = DEFAULTS;
  root.HeartbeatSocket = HeartbeatSocket;
})(typeof globalThis !== "undefined" ? globalThis : self);
