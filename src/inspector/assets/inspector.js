// Realtime inspector: Phoenix protocol vsn 1.0.0 (JSON objects) over one WebSocket.
// Everything shown goes through textContent; nothing untrusted reaches innerHTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let ws = null, ref = 0, joinRef = null, topic = null, paused = false, heartbeat = null;
  const base = location.pathname.startsWith("/realtime/v1") ? "/realtime/v1" : "";

  function setStatus(el, text, cls) { const e = $(el); e.textContent = text; e.className = "status " + (cls || ""); }
  function showError(text) { $("error").textContent = text || ""; }
  function log(kind, data) {
    if (paused) return;
    const li = document.createElement("li");
    li.textContent = new Date().toISOString().slice(11, 23) + " " + kind + " " + JSON.stringify(data);
    $("log").prepend(li);
  }
  function key() { return $("apikey").value.trim(); }
  function push(event, payload, withJoinRef) {
    if (!ws || ws.readyState !== WebSocket.OPEN) { showError("socket not open"); return; }
    ref += 1;
    ws.send(JSON.stringify({ topic: topic, event: event, payload: payload, ref: String(ref), join_ref: withJoinRef === false ? null : joinRef }));
  }
  function connect() {
    return new Promise((resolve, reject) => {
      if (ws && ws.readyState === WebSocket.OPEN) return resolve();
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      ws = new WebSocket(proto + "//" + location.host + "/realtime/v1/websocket" + "?vsn=1.0.0&apikey=" + encodeURIComponent(key()));
      setStatus("socket-status", "connecting");
      ws.onopen = () => {
        setStatus("socket-status", "connected", "ok");
        heartbeat = setInterval(() => { ref += 1; ws.send(JSON.stringify({ topic: "phoenix", event: "heartbeat", payload: {}, ref: String(ref) })); }, 25000);
        resolve();
      };
      ws.onerror = () => { showError("WebSocket error"); reject(new Error("ws error")); };
      ws.onclose = (e) => { clearInterval(heartbeat); setStatus("socket-status", "closed (" + e.code + ")", "bad"); setStatus("channel-status", "not joined"); };
      ws.onmessage = (m) => {
        let msg; try { msg = JSON.parse(m.data); } catch (_) { return; }
        if (msg.topic === "phoenix") return;
        if (msg.event === "phx_reply" && msg.join_ref === joinRef && msg.ref === joinRef) {
          const ok = msg.payload && msg.payload.status === "ok";
          setStatus("channel-status", ok ? "joined " + msg.topic : "join failed", ok ? "ok" : "bad");
          if (!ok) showError(JSON.stringify(msg.payload && msg.payload.response));
          log("phx_reply", msg.payload);
          return;
        }
        if (msg.event === "phx_error" || msg.event === "phx_close") setStatus("channel-status", msg.event, "bad");
        if (msg.event === "broadcast") { log("broadcast", msg.payload); return; }
        log(msg.event, msg.payload);
      };
    });
  }
  async function join() {
    showError("");
    topic = "realtime:" + $("topic").value.trim();
    const pg = [];
    if ($("pg-table").value.trim()) {
      const b = { event: $("pg-event").value, schema: $("pg-schema").value.trim() || "public", table: $("pg-table").value.trim() };
      if ($("pg-filter").value.trim()) b.filter = $("pg-filter").value.trim();
      pg.push(b);
    }
    try { await connect(); } catch (_) { return; }
    ref += 1; joinRef = String(ref);
    ws.send(JSON.stringify({ topic: topic, event: "phx_join", ref: joinRef, join_ref: joinRef, payload: {
      access_token: key(),
      config: { broadcast: { self: true, ack: false }, presence: { key: "" }, postgres_changes: pg, private: $("private").checked } } }));
    setStatus("channel-status", "joining");
  }
  function leave() { if (topic) { push("phx_leave", {}); setStatus("channel-status", "not joined"); } }
  function sendBroadcast() {
    const raw = $("bc-payload").value;
    let payload;
    if ($("bc-text").checked) payload = { text: raw };
    else { try { payload = JSON.parse(raw); } catch (e) { showError("payload is not JSON: " + e.message); return; } }
    push("broadcast", { type: "broadcast", event: $("bc-event").value, payload: payload });
  }
  function track() {
    let meta; try { meta = JSON.parse($("pr-meta").value); } catch (e) { showError("meta is not JSON: " + e.message); return; }
    push("presence", { type: "presence", event: "track", payload: meta });
  }
  async function refreshChannels() {
    if (!key()) { $("channels-message").textContent = "Paste a key to list channels (needs a service_role key)."; return; }
    try {
      const r = await fetch(base + "/api/channels?limit=100", { headers: { apikey: key(), authorization: "Bearer " + key() } });
      if (r.status === 404) { $("channels-message").textContent = "Channel listing is not available on this server."; return; }
      if (r.status === 401 || r.status === 403) { $("channels-message").textContent = "Listing channels needs a service_role key."; return; }
      const body = await r.json();
      const tb = $("channels-body"); tb.replaceChildren();
      for (const c of body.channels || []) {
        const tr = document.createElement("tr");
        for (const v of [c.topic, c.private ? "yes" : "no", c.members, c.presence]) { const td = document.createElement("td"); td.textContent = String(v); tr.append(td); }
        tr.addEventListener("click", () => { $("topic").value = c.topic; $("private").checked = !!c.private; });
        tb.append(tr);
      }
      $("channels-message").textContent = (body.channels || []).length + " channel(s)";
    } catch (e) { $("channels-message").textContent = "Listing failed: " + e.message; }
  }
  document.addEventListener("DOMContentLoaded", () => {
    $("join-btn").addEventListener("click", join);
    $("leave-btn").addEventListener("click", leave);
    $("bc-send").addEventListener("click", sendBroadcast);
    $("pr-track").addEventListener("click", track);
    $("pr-untrack").addEventListener("click", () => push("presence", { type: "presence", event: "untrack" }));
    $("pause-btn").addEventListener("click", () => { paused = !paused; $("pause-btn").textContent = paused ? "Resume" : "Pause"; });
    $("clear-btn").addEventListener("click", () => $("log").replaceChildren());
    const q = new URLSearchParams(location.search);
    if (q.get("apikey")) $("apikey").value = q.get("apikey");
    if (q.get("private") === "true") $("private").checked = true;
    setInterval(refreshChannels, 5000); refreshChannels();
    if (q.get("topic")) { $("topic").value = q.get("topic"); join(); }
  });
})();
