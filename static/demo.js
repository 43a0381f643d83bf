// The demo page: one HeartbeatSocket, its state, round trips, presence and a tiny chat.
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var room = document.body.dataset.room;
  var sock = new HeartbeatSocket(document.body.dataset.wsPath);
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

  // Presence -------------------------------------------------------------------------------

  var COLOURS = ["#3b5bdb", "#0ca678", "#e8590c", "#ae3ec9", "#1098ad", "#d6336c", "#5c940d", "#f08c00"];
  function colour(key) {
    var h = 0;
    for (var i = 0; i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) >>> 0;
    return COLOURS[h % COLOURS.length];
  }
  function displayName(key, metas) {
    var nick = metas.map(function (m) { return m.nick; }).filter(Boolean)[0];
    if (nick) return nick;
    return key.indexOf("anon:") === 0 ? "Guest " + key.slice(5, 9) : "User " + key;
  }

  function renderPresence() {
    var members = sock.members(room);
    var keys = Object.keys(members).sort();
    var list = $("hb-presence");
    list.replaceChildren();
    keys.forEach(function (key) {
      var metas = members[key].metas;
      var visible = metas.some(function (m) { return m.visible !== false; });
      var mine = metas.some(function (m) { return m.session === sock.session; });
      var li = document.createElement("li");
      li.dataset.member = key;
      li.dataset.visible = String(visible);
      var avatar = document.createElement("span");
      avatar.className = "avatar";
      avatar.style.background = colour(key);
      var name = displayName(key, metas);
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
      li.append(avatar, who);
      list.append(li);
    });
    $("hb-count").textContent = String(keys.length);
  }

  // Chat -------------------------------------------------------------------------------------

  function addChat(text, from, kind) {
    var li = document.createElement("li");
    if (kind) li.className = kind;
    if (kind !== "system") {
      var who = document.createElement("span");
      who.className = "from";
      who.textContent = kind === "mine" ? "you" : displayName(from, []);
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
    if (!sock.send({ type: "chat", text: text })) queued += 1;
    input.value = "";
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
  });
  sock.on("retry", function (ev) {
    $("hb-attempt").textContent = String(ev.attempt);
    log("retry #" + ev.attempt + " in " + (ev.delay / 1000).toFixed(1) + " s");
  });
  sock.on("presence", renderPresence);
  sock.on("join", function (ev) {
    if (!ev.metas.some(function (m) { return m.session === sock.session; })) {
      addChat(displayName(ev.key, ev.metas) + " joined", null, "system");
    }
  });
  sock.on("leave", function (ev) {
    addChat(displayName(ev.key, ev.metas) + " left (" + ev.reason + ")", null, "system");
  });
  sock.on("drop", function () { queued = Math.max(0, queued - 1); renderQueue(); });
  sock.on("message", function (ev) {
    var msg = ev.data;
    if (msg && msg.type === "chat") {
      var mine = msg.from === "anon:" + sock.tab || isMine(msg.from);
      addChat(msg.text, msg.from, mine ? "mine" : "");
    }
  });
  function isMine(key) {
    var metas = (sock.members(room)[key] || {}).metas || [];
    return metas.some(function (m) { return m.session === sock.session; });
  }

  renderStatus();
})();
