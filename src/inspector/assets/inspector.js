// Realtime inspector: the Phoenix channel protocol, vsn 2.0.0, over one WebSocket.
//
// Text frames are JSON arrays [join_ref, ref, topic, event, payload] both ways; the
// server also sends binary user broadcasts (type 4: 04 T E M enc | topic | event |
// metadata | payload, every length one byte, enc 1 = JSON, 0 = raw bytes), decoded here
// into the same shape as a text broadcast. See protocol.md §2.2-2.3.
//
// Everything received is shown through textContent: nothing from the server, the URL or
// the inputs ever reaches innerHTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const HEARTBEAT_MS = 25000;
  const CHANNELS_REFRESH_MS = 3000;
  const CHANNELS_PAGE = 50;
  const MAX_ENTRIES = 1000;
  const KEY_STORE = "realtime-inspector-key";

  // Where the server is: the page is <prefix>/inspector, the API <prefix>/api/..., the
  // socket <prefix>/websocket when mounted at /realtime/v1, else /realtime/v1/websocket.
  const prefix = location.pathname.replace(/\/inspector\/?$/, "");
  const wsPath = /\/realtime\/v1$/.test(prefix) ? prefix + "/websocket" : prefix + "/realtime/v1/websocket";
  const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + wsPath;

  let ws = null, wsKey = null, heartbeat = null, reconnectTimer = null, reconnectDelay = 1000;
  let nextRef = 0;
  const replies = new Map(); // ref -> function(payload)
  let chan = null; // { topic, sub, joinRef, private, state, wanted, payload }
  let presence = {}; // key -> metas
  let paused = false;
  const held = [];
  let devKeys = null;
  let cursor = null, cursorStack = [], listing = false;

  const makeRef = () => String(++nextRef);
  const key = () => $("apikey").value.trim();

  function setStatus(id, text, cls) { const e = $(id); e.textContent = text; e.className = "status " + (cls || ""); }
  function showError(text) { $("error").textContent = text || ""; }
  function pretty(v) {
    if (v === undefined) return "";
    try { return JSON.stringify(v, null, 2); } catch (_) { return String(v); }
  }
  function clock() {
    const d = new Date();
    const p = (n, w) => String(n).padStart(w || 2, "0");
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds()) + "." + p(d.getMilliseconds(), 3);
  }

  // ------------------------------------------------------------------ the feed

  /** Adds an entry on top (newest first); while paused it waits in `held`. */
  function addEntry(kind, title, body, detail) {
    const entry = { kind, title, body, detail, at: clock() };
    if (paused) { held.push(entry); updatePauseButton(); return; }
    render(entry);
  }
  function render(e) {
    const li = document.createElement("li");
    li.className = "entry kind-" + e.kind;
    const head = document.createElement("div");
    const at = document.createElement("span"); at.className = "time"; at.textContent = e.at;
    const kind = document.createElement("span"); kind.className = "badge"; kind.textContent = e.kind.replace("_", " ");
    const title = document.createElement("span"); title.className = "title"; title.textContent = e.title;
    head.append(at, kind, title);
    li.append(head);
    if (e.detail) { const d = document.createElement("div"); d.className = "detail"; d.textContent = e.detail; li.append(d); }
    if (e.body !== undefined && e.body !== "") { const pre = document.createElement("pre"); pre.textContent = e.body; li.append(pre); }
    const log = $("log");
    log.prepend(li);
    while (log.childElementCount > MAX_ENTRIES) log.lastElementChild.remove();
    $("log-count").textContent = "(" + log.childElementCount + ")";
  }
  function updatePauseButton() {
    $("pause-btn").textContent = paused ? "Resume" + (held.length ? " (" + held.length + " waiting)" : "") : "Pause";
  }
  function togglePause() {
    paused = !paused;
    if (!paused) { for (const e of held.splice(0)) render(e); }
    updatePauseButton();
  }

  // ------------------------------------------------------------------ wire format

  const utf8 = new TextDecoder("utf-8");
  /** A binary frame as [join_ref, ref, topic, event, payload], or null if not type 4. */
  function decodeBinary(buf) {
    const v = new Uint8Array(buf);
    if (v.length < 5 || v[0] !== 4) return null;
    const [t, e, m, enc] = [v[1], v[2], v[3], v[4]];
    let o = 5;
    const take = (n) => { const s = v.subarray(o, o + n); o += n; return s; };
    const topic = utf8.decode(take(t));
    const event = utf8.decode(take(e));
    const metaBytes = take(m);
    const rest = v.subarray(o);
    const payload = { type: "broadcast", event };
    if (metaBytes.length) { try { payload.meta = JSON.parse(utf8.decode(metaBytes)); } catch (_) { payload.meta = utf8.decode(metaBytes); } }
    if (enc === 1) { try { payload.payload = JSON.parse(utf8.decode(rest)); } catch (_) { payload.payload = utf8.decode(rest); } }
    else payload.binary = rest.slice();
    return [null, null, topic, "broadcast", payload];
  }
  function describeBinary(bytes) {
    const hex = Array.from(bytes.subarray(0, 64), (b) => b.toString(16).padStart(2, "0")).join(" ");
    let text = "";
    try { text = "\nas UTF-8: " + new TextDecoder("utf-8", { fatal: true }).decode(bytes); } catch (_) { /* not text */ }
    return "binary, " + bytes.length + " bytes: " + hex + (bytes.length > 64 ? " …" : "") + text;
  }

  function send(joinRef, ref, topic, event, payload) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify([joinRef, ref, topic, event, payload]));
    return true;
  }
  /** A push on the joined channel; `onReply(status, response)` gets its reply (10 s timeout). */
  function push(event, payload, onReply) {
    if (!chan || chan.state !== "joined") { showError("Join a channel first."); return false; }
    const ref = makeRef();
    if (!send(chan.joinRef, ref, chan.topic, event, payload)) { showError("The socket is not open."); return false; }
    if (onReply) {
      const timer = setTimeout(() => { if (replies.delete(ref)) onReply("timeout", {}); }, 10000);
      replies.set(ref, (p) => { clearTimeout(timer); onReply(p.status, p.response); });
    }
    return true;
  }

  // ------------------------------------------------------------------ socket

  function openSocket(k) {
    return new Promise((resolve, reject) => {
      if (ws && ws.readyState === WebSocket.OPEN && wsKey === k) return resolve();
      closeSocket();
      const sock = new WebSocket(wsBase + "?apikey=" + encodeURIComponent(k) + "&vsn=2.0.0");
      sock.binaryType = "arraybuffer";
      ws = sock; wsKey = k;
      setStatus("socket-status", "connecting");
      let opened = false;
      sock.onopen = () => {
        opened = true; reconnectDelay = 1000;
        setStatus("socket-status", "connected", "ok");
        heartbeat = setInterval(() => send(null, makeRef(), "phoenix", "heartbeat", {}), HEARTBEAT_MS);
        resolve();
      };
      sock.onclose = (ev) => {
        if (ws !== sock) return; // replaced on purpose
        clearInterval(heartbeat); ws = null;
        setStatus("socket-status", "closed (" + ev.code + ")", "bad");
        for (const cb of replies.values()) cb({ status: "error", response: { reason: "socket closed" } });
        replies.clear();
        if (!opened) { reject(new Error("refused")); return; }
        if (chan && chan.wanted) {
          setStatus("channel-status", "reconnecting", "bad");
          reconnectTimer = setTimeout(() => { if (chan && chan.wanted) join(chan.request); }, reconnectDelay);
          reconnectDelay = Math.min(reconnectDelay * 2, 10000);
        } else setStatus("channel-status", "not joined");
      };
      sock.onmessage = (m) => {
        let msg;
        if (typeof m.data === "string") { try { msg = JSON.parse(m.data); } catch (_) { return; } }
        else msg = decodeBinary(m.data);
        if (!Array.isArray(msg) || msg.length < 5) { addEntry("system", "undecodable frame", typeof m.data === "string" ? m.data : describeBinary(new Uint8Array(m.data))); return; }
        onFrame(msg[0], msg[1], msg[2], msg[3], msg[4]);
      };
    });
  }
  function closeSocket() {
    clearInterval(heartbeat); clearTimeout(reconnectTimer);
    if (ws) { const old = ws; ws = null; old.close(1000); }
    setStatus("socket-status", "disconnected");
  }

  /** Why a socket could not open: browsers hide the HTTP status, so ask the API. */
  async function explainRefusal(k) {
    try {
      const r = await fetch(prefix + "/api/channels?limit=1", { headers: { authorization: "Bearer " + k } });
      if (r.status === 401) return "The server refused this key (invalid, expired, or signed with another secret).";
    } catch (_) { /* fall through */ }
    return "The WebSocket connection failed (see the server log).";
  }

  // ------------------------------------------------------------------ channel

  function onFrame(joinRef, ref, topic, event, payload) {
    if (topic === "phoenix") return; // heartbeat replies
    if (event === "phx_reply" && ref !== null && replies.has(ref)) {
      const cb = replies.get(ref); replies.delete(ref); cb(payload || {}); return;
    }
    if (!chan || topic !== chan.topic) return;
    if (joinRef !== null && joinRef !== chan.joinRef) return; // a previous join's
    if (payload === null || typeof payload !== "object") payload = { value: payload };
    switch (event) {
      case "phx_close":
        chan.state = "closed";
        if (chan.wanted) setStatus("channel-status", "closed by the server", "bad"); else setStatus("channel-status", "not joined");
        addEntry("system", "phx_close " + chan.sub, "");
        clearPresence(); break;
      case "phx_error":
        chan.state = "errored"; setStatus("channel-status", "errored", "bad");
        addEntry("system", "phx_error " + chan.sub, ""); break;
      case "system":
        addEntry("system", "system " + (payload.extension || "") + " " + (payload.status || ""), payload.message || pretty(payload));
        if (payload.status === "error") showError(payload.message || pretty(payload));
        break;
      case "presence_state":
        presence = {};
        for (const k of Object.keys(payload)) presence[k] = ((payload[k] && payload[k].metas) || []).slice();
        renderPresence();
        addEntry("presence", "presence_state (" + Object.keys(presence).length + " keys)", pretty(payload)); break;
      case "presence_diff":
        applyDiff(payload);
        addEntry("presence", "presence_diff +" + Object.keys(payload.joins || {}).length + " −" + Object.keys(payload.leaves || {}).length, pretty(payload)); break;
      case "broadcast": {
        const p = payload;
        const body = p.binary ? describeBinary(p.binary) : pretty(p.payload);
        addEntry("broadcast", String(p.event), body, p.meta ? "meta " + JSON.stringify(p.meta) : ""); break;
      }
      case "postgres_changes": {
        const d = payload.data || {};
        addEntry("postgres_changes", (d.type || d.eventType || "") + " " + (d.schema || "") + "." + (d.table || ""), pretty(d), "ids " + JSON.stringify(payload.ids || [])); break;
      }
      default:
        addEntry("system", event, pretty(payload));
    }
  }

  function clearPresence() { presence = {}; renderPresence(); }
  function applyDiff(diff) {
    for (const [k, v] of Object.entries(diff.leaves || {})) {
      const gone = new Set(((v && v.metas) || []).map((m) => m.phx_ref));
      const left = (presence[k] || []).filter((m) => !gone.has(m.phx_ref));
      if (left.length) presence[k] = left; else delete presence[k];
    }
    for (const [k, v] of Object.entries(diff.joins || {})) {
      const have = new Set((presence[k] || []).map((m) => m.phx_ref));
      presence[k] = (presence[k] || []).concat(((v && v.metas) || []).filter((m) => !have.has(m.phx_ref)));
    }
    renderPresence();
  }
  function renderPresence() {
    const ul = $("presence-list"); ul.replaceChildren();
    const keys = Object.keys(presence).sort();
    for (const k of keys) {
      const li = document.createElement("li");
      const b = document.createElement("b"); b.textContent = k;
      const metas = presence[k].map((m) => { const c = Object.assign({}, m); delete c.phx_ref; delete c.phx_ref_prev; return c; });
      li.append(b, document.createTextNode(" " + JSON.stringify(metas)));
      ul.append(li);
    }
    $("presence-count").textContent = "(" + keys.length + ")";
  }

  /** The join request from the form. */
  function requestFromForm() {
    const pg = [];
    const table = $("pg-table").value.trim();
    if (table) {
      const b = { event: $("pg-event").value, schema: $("pg-schema").value.trim() || "public", table };
      const filter = $("pg-filter").value.trim();
      if (filter) b.filter = filter;
      pg.push(b);
    }
    return { sub: $("topic").value.trim(), private: $("private").checked, presenceKey: $("presence-key").value.trim(), pg };
  }

  async function join(request) {
    showError("");
    const k = key();
    if (!k) { showError("Paste a key first (anon, service_role or a user JWT)."); return; }
    if (!request.sub) { showError("Name a topic to join."); return; }
    if (chan && chan.state !== "closed" && ws && ws.readyState === WebSocket.OPEN) send(chan.joinRef, makeRef(), chan.topic, "phx_leave", {});
    clearPresence();
    const topic = "realtime:" + request.sub;
    chan = { topic, sub: request.sub, joinRef: null, private: request.private, state: "joining", wanted: true, request };
    setStatus("channel-status", "joining " + request.sub);
    try { await openSocket(k); } catch (_) {
      chan.wanted = false;
      setStatus("channel-status", "not joined");
      showError(await explainRefusal(k));
      return;
    }
    const joinRef = makeRef();
    chan.joinRef = joinRef;
    const payload = {
      config: {
        broadcast: { self: true, ack: true },
        presence: { key: request.presenceKey, enabled: true },
        postgres_changes: request.pg,
        private: request.private,
      },
      access_token: k,
    };
    replies.set(joinRef, (p) => {
      if (!chan || chan.joinRef !== joinRef) return;
      if (p.status === "ok") {
        chan.state = "joined";
        setStatus("channel-status", "joined " + request.sub + (request.private ? " (private)" : ""), "ok");
        $("join-info").textContent = "Joined " + topic + (request.pg.length ? "; Postgres Changes: " + JSON.stringify((p.response || {}).postgres_changes || []) : "");
        addEntry("system", "joined " + request.sub, pretty(p.response));
        rememberInUrl(request);
      } else {
        chan.state = "closed"; chan.wanted = false;
        const reason = (p.response && p.response.reason) || pretty(p.response);
        setStatus("channel-status", "join refused", "bad");
        showError("Join refused: " + reason);
        addEntry("system", "join refused " + request.sub, reason);
      }
    });
    send(joinRef, joinRef, topic, "phx_join", payload);
  }

  function leave() {
    if (!chan) return;
    chan.wanted = false;
    if (chan.state === "joined" || chan.state === "joining") send(chan.joinRef, makeRef(), chan.topic, "phx_leave", {});
    setStatus("channel-status", "not joined");
    clearPresence();
  }

  /** Puts topic and private (never the key) in the address bar, so the link can be shared. */
  function rememberInUrl(request) {
    const q = new URLSearchParams(location.search);
    q.delete("apikey");
    q.set("topic", request.sub);
    if (request.private) q.set("private", "true"); else q.delete("private");
    history.replaceState(null, "", location.pathname + "?" + q.toString());
  }

  // ------------------------------------------------------------------ actions

  function sendBroadcast() {
    showError("");
    const raw = $("bc-payload").value;
    let payload;
    if ($("bc-text").checked) payload = raw;
    else { try { payload = JSON.parse(raw); } catch (e) { showError("The payload is not JSON: " + e.message); return; } }
    const event = $("bc-event").value.trim();
    if (!event) { showError("Name the broadcast event."); return; }
    $("bc-status").textContent = "sending…";
    const sent = push("broadcast", { type: "broadcast", event, payload }, (status, response) => {
      $("bc-status").textContent = status === "ok" ? "sent at " + clock() : "not sent: " + (status === "timeout" ? "no reply" : pretty(response));
    });
    if (!sent) $("bc-status").textContent = "";
  }
  function track() {
    showError("");
    let meta;
    try { meta = JSON.parse($("pr-meta").value); } catch (e) { showError("The presence meta is not JSON: " + e.message); return; }
    if (meta === null || typeof meta !== "object" || Array.isArray(meta)) { showError("The presence meta must be a JSON object."); return; }
    push("presence", { type: "presence", event: "track", payload: meta }, (status, response) => {
      $("pr-status").textContent = status === "ok" ? "tracked" : "track failed: " + pretty(response);
    });
  }
  function untrack() {
    showError("");
    push("presence", { type: "presence", event: "untrack" }, (status, response) => {
      $("pr-status").textContent = status === "ok" ? "untracked" : "untrack failed: " + pretty(response);
    });
  }

  // ------------------------------------------------------------------ key

  function describeKey() {
    const k = key();
    let text = "";
    if (k) {
      try {
        const b64 = k.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        const claims = JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4)));
        text = "role " + claims.role + (claims.sub ? ", sub " + claims.sub : "") +
          (claims.exp ? ", expires " + new Date(claims.exp * 1000).toISOString() : "");
      } catch (_) { text = "not a JWT"; }
    }
    $("key-info").textContent = text;
    try { if (k) sessionStorage.setItem(KEY_STORE, k); else sessionStorage.removeItem(KEY_STORE); } catch (_) { /* storage off */ }
  }
  function useKey(k) { $("apikey").value = k; describeKey(); cursor = null; cursorStack = []; refreshChannels(); }

  async function loadDevKeys() {
    try {
      const r = await fetch(prefix + "/inspector/dev-keys", { cache: "no-store" });
      if (!r.ok) return;
      devKeys = await r.json();
      $("dev-keys").hidden = false;
    } catch (_) { /* not in development mode */ }
  }

  // ------------------------------------------------------------------ channel list

  async function refreshChannels() {
    if (listing) return;
    const k = key();
    const msg = $("channels-message");
    const table = $("channels-table");
    if (!k) { table.hidden = true; msg.className = "muted"; msg.textContent = "Paste a service_role key to list the live channels."; return; }
    listing = true;
    try {
      const q = new URLSearchParams({ limit: String(CHANNELS_PAGE) });
      const prefixFilter = $("channels-prefix").value.trim();
      if (prefixFilter) q.set("prefix", prefixFilter);
      if (cursor) q.set("cursor", cursor);
      const r = await fetch(prefix + "/api/channels?" + q.toString(), { headers: { authorization: "Bearer " + k }, cache: "no-store" });
      let body = null;
      try { body = await r.json(); } catch (_) { /* not JSON */ }
      if (!r.ok) {
        table.hidden = true; $("channels-body").replaceChildren(); $("channels-count").textContent = "";
        $("channels-next").disabled = true;
        msg.className = "error";
        const said = body && body.message ? " (" + r.status + " " + body.message + ")" : " (" + r.status + ")";
        msg.textContent = (r.status === 401 || r.status === 403 ? "Listing channels needs a service_role key" : "Listing channels failed") + said + ".";
        return;
      }
      renderChannels(body.channels || []);
      $("channels-next").disabled = !body.next_cursor;
      $("channels-next").dataset.cursor = body.next_cursor || "";
      $("channels-first").disabled = !cursor;
      msg.className = "muted";
      msg.textContent = "Updated " + clock() + (cursor ? " (page " + (cursorStack.length + 1) + ")" : "");
    } catch (e) {
      msg.className = "error"; msg.textContent = "Listing channels failed: " + e.message;
    } finally { listing = false; }
  }
  function renderChannels(channels) {
    const tb = $("channels-body"); tb.replaceChildren();
    for (const c of channels) {
      const tr = document.createElement("tr");
      tr.dataset.topic = c.topic;
      if (chan && chan.sub === c.topic && chan.private === !!c.private && chan.state === "joined") tr.className = "current";
      for (const v of [c.topic, c.private ? "yes" : "no", c.members, c.presence]) {
        const td = document.createElement("td"); td.textContent = String(v); tr.append(td);
      }
      const td = document.createElement("td");
      const b = document.createElement("button"); b.type = "button"; b.textContent = "Join";
      b.addEventListener("click", () => { $("topic").value = c.topic; $("private").checked = !!c.private; join(requestFromForm()); });
      td.append(b); tr.append(td);
      tb.append(tr);
    }
    $("channels-table").hidden = false;
    $("channels-count").textContent = "(" + channels.length + (channels.length === CHANNELS_PAGE ? "+" : "") + ")";
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", async () => {
    $("join-btn").addEventListener("click", () => join(requestFromForm()));
    $("leave-btn").addEventListener("click", leave);
    $("bc-send").addEventListener("click", sendBroadcast);
    $("pr-track").addEventListener("click", track);
    $("pr-untrack").addEventListener("click", untrack);
    $("pause-btn").addEventListener("click", togglePause);
    $("clear-btn").addEventListener("click", () => { $("log").replaceChildren(); held.length = 0; updatePauseButton(); $("log-count").textContent = ""; });
    for (const box of document.querySelectorAll(".kind-filter")) {
      box.addEventListener("change", () => $("log").classList.toggle("hide-" + box.value, !box.checked));
    }
    $("apikey").addEventListener("change", () => useKey(key()));
    $("key-show").addEventListener("click", () => {
      const i = $("apikey"); i.type = i.type === "password" ? "text" : "password";
      $("key-show").textContent = i.type === "password" ? "Show" : "Hide";
    });
    $("dev-anon").addEventListener("click", () => devKeys && useKey(devKeys.anon));
    $("dev-service").addEventListener("click", () => devKeys && useKey(devKeys.service_role));
    $("channels-refresh").addEventListener("click", refreshChannels);
    $("channels-prefix").addEventListener("change", () => { cursor = null; cursorStack = []; refreshChannels(); });
    $("channels-next").addEventListener("click", () => { cursorStack.push(cursor); cursor = $("channels-next").dataset.cursor || null; refreshChannels(); });
    $("channels-first").addEventListener("click", () => { cursor = null; cursorStack = []; refreshChannels(); });

    // Deep link: ?topic=<topic>&apikey=<key>[&private=true][&table=…&schema=…&filter=…&event=…]
    const q = new URLSearchParams(location.search);
    let k = q.get("apikey");
    if (!k) { try { k = sessionStorage.getItem(KEY_STORE); } catch (_) { k = null; } }
    if (q.has("apikey")) { q.delete("apikey"); history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q.toString() : "")); }
    await loadDevKeys();
    if (!k && devKeys) k = devKeys.anon;
    if (k) $("apikey").value = k;
    describeKey();
    if (q.get("private") === "true") $("private").checked = true;
    if (q.get("table")) $("pg-table").value = q.get("table");
    if (q.get("schema")) $("pg-schema").value = q.get("schema");
    if (q.get("filter")) $("pg-filter").value = q.get("filter");
    const pgEvent = (q.get("event") || "").toUpperCase();
    if (["*", "INSERT", "UPDATE", "DELETE"].includes(pgEvent)) $("pg-event").value = pgEvent;
    setInterval(() => { if (!document.hidden) refreshChannels(); }, CHANNELS_REFRESH_MS);
    refreshChannels();
    if (q.get("topic")) { $("topic").value = q.get("topic"); join(requestFromForm()); }
  });
})();
