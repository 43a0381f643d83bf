// The demo page: one HeartbeatSocket, its state, round trips, and presence in one room at a
// time: a room switcher (leave + join over the same socket), a status, "typing…" and chat.
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var here = document.body.dataset.room;   // the room shown
  var going = null;                        // the room being joined, until its state arrives
  var listed = {};                         // rooms whose first list came: joins before it are no news
  // The URL names the room shown: a reconnect lands there, not in the page's first room,
  // which the server would join on accept (and the client then leave again).
  var sock = new HeartbeatSocket(function () { return "/ws/rooms/" + here + "/"; });
  window.demo = { sock: sock };   // handy from the console

  // Status banner ----------------------------------------------------------------------

  var LABELS = {
    connecting: "Connecting…",
    open: "Connected",
    reconnecting: "Reconnecting…",
    offline: "Offline: waiting for the network",
    suspended: "Paused while this tab is hidden",
    closed: "Disconnected",
  };
  var status = $("hb-status");
  var statusText = status.querySelector(".status-text");
  var reconnectButton = $("hb-reconnect");

  function renderStatus() {
    var state = sock.state;
    var text = LABELS[state];
    if (state === "reconnecting" && sock.retryAt) {
      var secs = Math.ceil((sock.retryAt - Date.now()) / 1000);
      text = secs > 0 ? "Reconnecting in " + secs + " s…" : "Reconnecting…";
    }
    status.dataset.state = state;
    statusText.textContent = text;
    reconnectButton.hidden = !(state === "reconnecting" || state === "closed" || state === "offline");
    document.querySelector("main").classList.toggle("stale", state !== "open");
  }
  setInterval(renderStatus, 250);
  reconnectButton.addEventListener("click", function () { sock.reconnect(); });

  // Connection card ----------------------------------------------------------------------

  var rtts = [];
  function renderRtt() {
    $("hb-rtt").textContent = sock.rtt == null ? "–" : sock.rtt + " ms";
    var max = Math.max.apply(null, rtts.concat([4])) * 1.25;
    var step = 200 / Math.max(1, rtts.length - 1);
    var pts = rtts.map(function (r, i) {
      return (i * step).toFixed(1) + "," + (34 - (r / max) * 30).toFixed(1);
    });
    $("hb-spark").firstElementChild.setAttribute("points", pts.join(" "));
  }

  function log(text) {
    var li = document.createElement("li");
    var time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString([], { hour12: false });
    li.append(time, text);
    var list = $("hb-log");
    list.prepend(li);
    while (list.children.length > 40) list.lastChild.remove();
  }

  // Rooms ------------------------------------------------------------------------------------

  function renderRoom() {
    var title = $("hb-room");
    title.dataset.room = here;
    title.textContent = "#" + here;
    document.body.dataset.room = here;
    document.title = here + " · heartbeat_app demo";
    $("hb-chat-text").placeholder = "Say something to #" + here;
    var buttons = $("hb-rooms").querySelectorAll("button[data-room]");
    for (var i = 0; i < buttons.length; i++) {
      var room = buttons[i].dataset.room;
      buttons[i].setAttribute("aria-pressed", String(room === here));
      buttons[i].classList.toggle("going", room === going);
    }
  }

  function showRoomError(room, code, detail) {
    var box = $("hb-room-error");
    box.dataset.code = code || "";
    box.dataset.room = room || "";
    box.hidden = !code;
    if (!code) return void (box.textContent = "");
    var why = code === "room_forbidden"
      ? (document.body.dataset.signedIn === "true" ? "this account may not join it."
        : "sign in to join private rooms.")
      : code === "room_full" ? "it is full." : detail || code;
    box.textContent = "#" + room + " refused you (" + code + "): " + why;
  }

  /** Join `next`; the current room is left once next's state arrives (see the presence handler). */
  function switchTo(next) {
    if (next === here && !going) return;
    showRoomError(null);
    if (going && going !== next) sock.leave(going);   // a change of mind before it arrived
    going = next === here ? null : next;
    try {
      if (going) sock.join(going);
    } catch (err) {   // a name the server would refuse
      showRoomError(next, "invalid_room", err.message);
      going = null;
    }
    renderRoom();
  }

  function arrived(room) {
    var old = here;
    here = room;
    going = null;
    if (old !== room) sock.leave(old);
    delete listed[old];
    typing = {};
    renderTyping();
    $("hb-chat").replaceChildren();
    addChat("You are in #" + room + ".", null, "system");
    // Statuses are per room; the chosen one follows the tab.
    if (myStatus !== "available") sock.setPresence(room, { status: myStatus });
    history.replaceState(null, "", "?room=" + encodeURIComponent(room));
    renderRoom();
  }

  $("hb-rooms").addEventListener("click", function (ev) {
    var button = ev.target.closest("button[data-room]");
    if (button) switchTo(button.dataset.room);
  });
  $("hb-room-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = $("hb-room-input");
    switchTo(input.value.trim());
    input.value = "";
  });

  // Presence -------------------------------------------------------------------------------

  var COLOURS = ["#3b5bdb", "#0ca678", "#e8590c", "#ae3ec9", "#1098ad", "#d6336c", "#5c940d", "#f08c00"];
  function colour(key) {
    var h = 0;
    for (var i = 0; i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) >>> 0;
    return COLOURS[h % COLOURS.length];
  }
  function nameOf(key) {
    var metas = ((sock.members(here)[key] || {}).metas) || [];
    var nick = metas.map(function (m) { return m.nick; }).filter(Boolean)[0];
    if (nick) return nick;
    return key.indexOf("anon:") === 0 ? "Guest " + key.slice(5, 9) : "User " + key;
  }
  function statusOf(metas) {
    // A member with several tabs is busy if any tab says so.
    return metas.some(function (m) { return m.state && m.state.status === "busy"; }) ? "busy" : "available";
  }

  function renderPresence() {
    var members = sock.members(here);
    var count = sock.count(here);
    var countOnly = count != null && Object.keys(members).length === 0 && count > 0;
    var keys = Object.keys(members).sort();
    var list = $("hb-presence");
    list.replaceChildren();
    keys.forEach(function (key) {
      var metas = members[key].metas;
      var visible = metas.some(function (m) { return m.visible !== false; });
      var mine = metas.some(function (m) { return m.session === sock.session; });
      var state = statusOf(metas);
      var li = document.createElement("li");
      li.dataset.member = key;
      li.dataset.visible = String(visible);
      li.dataset.status = state;
      var avatar = document.createElement("span");
      avatar.className = "avatar";
      avatar.style.background = colour(key);
      var name = nameOf(key);
      avatar.textContent = name.replace(/^(Guest|User) /, "").slice(0, 2).toUpperCase();
      var who = document.createElement("span");
      who.className = "who";
      var strong = document.createElement("strong");
      strong.textContent = name;
      if (mine) {
        var you = document.createElement("span");
        you.className = "you";
        you.textContent = "you";
        strong.append(you);
      }
      var small = document.createElement("small");
      small.textContent = (visible ? "looking" : "in the background") +
        (metas.length > 1 ? " · " + metas.length + " tabs" : "");
      who.append(strong, small);
      var badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = state;
      li.append(avatar, who, badge);
      list.append(li);
    });
    var counter = $("hb-count");
    counter.textContent = String(count == null ? keys.length : count);
    counter.dataset.countOnly = String(countOnly);
    $("hb-big-room").hidden = !countOnly;
  }

  var myStatus = "available";
  $("hb-status-picker").addEventListener("change", function (ev) {
    myStatus = ev.target.value;
    sock.setPresence(here, { status: myStatus });
  });

  // Typing -------------------------------------------------------------------------------------

  var TYPING_EVERY = 1500;   // ms between two "typing" signals of this tab while it types
  var TYPING_SHOWN = 3500;   // ms a signal keeps a name on the line
  var typing = {};           // key -> when its line goes
  var typingSentAt = 0;

  function renderTyping() {
    var now = Date.now();
    var keys = Object.keys(typing).filter(function (k) { return typing[k] > now; }).sort();
    var line = $("hb-typing");
    line.dataset.keys = keys.join(" ");
    line.hidden = keys.length === 0;
    var names = keys.map(nameOf);
    line.textContent = names.length === 0 ? "" : names.length === 1 ? names[0] + " is typing…"
      : names.slice(0, -1).join(", ") + " and " + names[names.length - 1] + " are typing…";
  }
  function expireTyping() {
    var now = Date.now(), changed = false;
    for (var k in typing) if (typing[k] <= now) { delete typing[k]; changed = true; }
    if (changed) renderTyping();
  }
  setInterval(expireTyping, 500);

  function sendTyping(on) {
    // The client throttles each event to 10 a second already; a line needs far fewer.
    var now = Date.now();
    if (on && now - typingSentAt < TYPING_EVERY) return;
    typingSentAt = on ? now : 0;
    sock.broadcast(here, "typing", { typing: on });
  }
  $("hb-chat-text").addEventListener("input", function (ev) { sendTyping(ev.target.value !== ""); });
  $("hb-chat-text").addEventListener("blur", function () { if (typingSentAt) sendTyping(false); });

  // Chat -------------------------------------------------------------------------------------

  function addChat(text, from, kind) {
    var li = document.createElement("li");
    if (kind) li.className = kind;
    if (kind !== "system") {
      var who = document.createElement("span");
      who.className = "from";
      who.textContent = kind === "mine" ? "you" : nameOf(from);
      var bubble = document.createElement("span");
      bubble.className = "bubble";
      bubble.textContent = text;
      li.append(who, bubble);
    } else {
      li.textContent = text;
    }
    var list = $("hb-chat");
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }

  var queued = 0;
  function renderQueue() {
    var note = $("hb-queue");
    note.hidden = queued === 0;
    note.textContent = queued + (queued === 1 ? " message waits" : " messages wait") + " for the connection.";
  }

  $("hb-chat-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = $("hb-chat-text");
    var text = input.value.trim();
    if (!text) return;
    if (!sock.send({ type: "chat", room: here, text: text })) queued += 1;
    input.value = "";
    if (typingSentAt) sendTyping(false);
    renderQueue();
  });

  // Client events ------------------------------------------------------------------------------

  sock.on("state", function (ev) { renderStatus(); log(ev.state); });
  sock.on("open", function (ev) {
    queued = 0;
    renderQueue();
    $("hb-tab").textContent = ev.tab;
    $("hb-interval").textContent = ev.interval == null ? "off" : (ev.interval / 1000) + " s / " + (ev.timeout / 1000) + " s";
    $("hb-attempt").textContent = String(sock.attempt);
    log("session " + String(ev.session).slice(0, 8) + "…");
  });
  sock.on("pong", function (ev) {
    rtts.push(ev.rtt);
    if (rtts.length > 40) rtts.shift();
    renderRtt();
    $("hb-attempt").textContent = String(sock.attempt);
  });
  sock.on("close", function (ev) {
    log("closed " + ev.code + (ev.reason ? " (" + ev.reason + ")" : ""));
    if (!ev.willReconnect && (ev.code === 4401 || ev.code === 4403) && here !== "lobby") {
      // The room of the URL was refused at connect, which closes the socket: go on in the
      // lobby, where anyone may be.
      here = "lobby";
      history.replaceState(null, "", "?room=lobby");
      renderRoom();
      sock.connect();
    }
  });
  sock.on("retry", function (ev) {
    $("hb-attempt").textContent = String(ev.attempt);
    log("retry #" + ev.attempt + " in " + (ev.delay / 1000).toFixed(1) + " s");
  });
  sock.on("presence", function (ev) {
    if (ev.room === going && ev.count != null) arrived(going);
    if (ev.room !== here) return;
    listed[ev.room] = ev.count != null;
    renderPresence();
  });
  sock.on("count", function (ev) { if (ev.room === here) renderPresence(); });
  sock.on("join", function (ev) {
    if (ev.room !== here || !listed[here]) return;
    if (!ev.metas.some(function (m) { return m.session === sock.session; })) {
      addChat(nameOf(ev.key) + " joined", null, "system");
    }
  });
  sock.on("leave", function (ev) {
    if (ev.room !== here) return;
    delete typing[ev.key];
    renderTyping();
    var nick = ev.metas.map(function (m) { return m.nick; }).filter(Boolean)[0];
    var name = nick || (ev.key.indexOf("anon:") === 0 ? "Guest " + ev.key.slice(5, 9) : "User " + ev.key);
    addChat(name + " left (" + ev.reason + ")", null, "system");
  });
  sock.on("broadcast", function (ev) {
    if (ev.room !== here || ev.event !== "typing") return;
    if (ev.data && ev.data.typing) typing[ev.from] = Date.now() + TYPING_SHOWN;
    else delete typing[ev.from];
    renderTyping();
  });
  sock.on("refused", function (ev) {
    log("refused " + ev.room + " (" + ev.code + ")");
    if (ev.room === going) {
      going = null;   // still in the room shown
      renderRoom();
    }
    showRoomError(ev.room, ev.code, ev.detail);
  });
  sock.on("drop", function () { queued = Math.max(0, queued - 1); renderQueue(); });
  sock.on("message", function (ev) {
    var msg = ev.data;
    if (msg && msg.type === "chat" && (msg.room == null || msg.room === here)) {
      addChat(msg.text, msg.from, isMine(msg.from) ? "mine" : "");
    }
  });
  function isMine(key) {
    if (key && key === sock.memberKey) return true;
    var metas = (sock.members(here)[key] || {}).metas || [];
    return metas.some(function (m) { return m.session === sock.session; });
  }

  renderRoom();
  renderStatus();
})();
