// The atlas ops page: live session table, actions, timeline, orphans, reaper health.
// Plain JavaScript, no build step; inlined into the page with a CSP nonce.
"use strict";
(() => {
  const body = document.body;
  const base = body.dataset.base;
  const csrfHeader = body.dataset.csrfHeader;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (sel, root) => (root || document).querySelector(sel);
  const tbody = $("#session-table tbody");
  const rows = new Map();          // id -> row data
  let offset = 0;                  // server clock - browser clock (ms)
  const FIELDS = ["status", "user", "provider", "gpu", "idle_for", "ttl_left",
                  "cost_per_hour", "accrued_usd", "url"];

  const serverNow = () => Date.now() + offset;
  const dur = (ms) => {
    if (ms === null || ms === undefined) return "";
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
  };
  const money = (v, digits) => (v === null || v === undefined) ? "" : "$" + v.toFixed(digits);

  function flash(text, kind) {
    const el = $("#flash");
    el.textContent = text;
    el.dataset.kind = kind || "info";
    el.style.display = "block";
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { el.style.display = "none"; }, 4000);
  }

  async function api(path, options) {
    const opts = Object.assign({credentials: "same-origin", headers: {}}, options || {});
    if (opts.method === "POST") opts.headers[csrfHeader] = csrf;
    const resp = await fetch(base + path, opts);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (resp.status === 401) { window.location = base + "login"; }
    if (!resp.ok) throw new Error((data && data.error && data.error.message) || resp.statusText);
    return data;
  }

  // ---------------------------------------------------------------- live values
  function live(row) {
    const now = serverNow();
    const ended = !row.tracked || ["terminated", "failed"].includes(row.status);
    const idle = (row.last_activity_ms && !ended) ? now - row.last_activity_ms : null;
    const ttl = (row.deadline_ms && !ended) ? row.deadline_ms - now : null;
    let accrued = null;
    if (row.cost_per_hour !== null && row.running_at_ms) {
      const end = row.ended_at_ms || now;
      accrued = row.cost_per_hour * Math.max(0, end - row.running_at_ms) / 3600000;
    }
    return {status: row.status, user: row.user, provider: row.provider, gpu: row.gpu,
            idle_for: dur(idle), ttl_left: dur(ttl), cost_per_hour: money(row.cost_per_hour, 2),
            accrued_usd: money(accrued, 4), url: row.url};
  }

  function cell(tr, field) { return tr.querySelector('[data-field="' + field + '"]'); }

  function buildRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.sessionId = id;
    const idCell = document.createElement("td");
    const link = document.createElement("a");
    link.href = "#"; link.className = "sid"; link.dataset.action = "timeline";
    link.textContent = id; link.title = "Show the event timeline";
    idCell.appendChild(link);
    tr.appendChild(idCell);
    for (const f of FIELDS) {
      const td = document.createElement("td");
      td.dataset.field = f;
      if (["idle_for", "ttl_left", "cost_per_hour", "accrued_usd"].includes(f)) td.className = "num";
      if (f === "url") { const a = document.createElement("a"); a.target = "_blank";
        a.rel = "noopener noreferrer"; td.appendChild(a); }
      tr.appendChild(td);
    }
    const actions = document.createElement("td");
    for (const [action, label] of [["touch", "Touch"], ["stop", "Stop"], ["terminate", "Terminate"]]) {
      const b = document.createElement("button");
      b.type = "button"; b.dataset.action = action; b.textContent = label;
      if (action === "terminate") b.className = "danger";
      actions.appendChild(b); actions.appendChild(document.createTextNode(" "));
    }
    tr.appendChild(actions);
    return tr;
  }

  function paint(tr, row) {
    const values = live(row);
    for (const f of FIELDS) {
      const td = cell(tr, f);
      if (f === "url") {
        const a = td.firstChild;
        if (a.textContent !== values.url) { a.textContent = values.url; a.href = values.url || "#"; }
        continue;
      }
      if (td.textContent !== values[f]) td.textContent = values[f];
    }
    const st = cell(tr, "status");
    st.className = "status status-" + row.status;
    st.title = [row.reason && ("reason: " + row.reason), row.stop_requested && "stop requested",
                row.last_error].filter(Boolean).join(" · ");
    const ended = !row.tracked || ["terminated", "failed"].includes(row.status);
    tr.classList.toggle("ended", ended);
    tr.querySelector('[data-action="touch"]').disabled = ended || !["running", "spawning"].includes(row.status);
    tr.querySelector('[data-action="stop"]').disabled = ended || row.status === "terminating";
    tr.querySelector('[data-action="terminate"]').disabled = ended;
  }

  function visible(row) {
    const u = $("#f-user").value.trim().toLowerCase();
    const p = $("#f-provider").value, s = $("#f-status").value;
    return (!u || row.user.toLowerCase().includes(u)) && (!p || row.provider === p) &&
           (!s || row.status === s);
  }

  function render() {
    const ordered = [...rows.values()].sort((a, b) => (b.created_at_ms || 0) - (a.created_at_ms || 0));
    let shown = 0;
    ordered.forEach((row, i) => {
      let tr = tbody.querySelector('tr[data-session-id="' + CSS.escape(row.id) + '"]');
      if (!tr) tr = buildRow(row.id);
      paint(tr, row);
      tr.hidden = !visible(row);
      if (!tr.hidden) shown++;
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    for (const tr of [...tbody.children]) if (!rows.has(tr.dataset.sessionId)) tr.remove();
    $("#count").textContent = "(" + shown + " shown, " + [...rows.values()].filter(r => r.tracked).length + " tracked)";
    $("#empty").hidden = rows.size > 0;
    const providers = new Set([...rows.values()].map(r => r.provider));
    const sel = $("#f-provider");
    for (const p of providers) if (![...sel.options].some(o => o.value === p)) sel.add(new Option(p, p));
  }

  function tick() {
    for (const tr of tbody.children) { const row = rows.get(tr.dataset.sessionId); if (row) paint(tr, row); }
  }

  // ---------------------------------------------------------------- live feed
  function connect() {
    const es = new EventSource(base + "api/events", {withCredentials: true});
    const conn = $("#conn");
    es.addEventListener("snapshot", (ev) => {
      const msg = JSON.parse(ev.data);
      offset = msg.now_ms - Date.now();
      rows.clear();
      for (const row of msg.rows) rows.set(row.id, row);
      conn.dataset.state = "live"; conn.textContent = "live";
      render();
    });
    es.addEventListener("changes", (ev) => {
      const msg = JSON.parse(ev.data);
      offset = msg.now_ms - Date.now();
      const openId = $("#timeline").hidden ? null : $("#timeline-id").textContent;
      let refreshTimeline = false;
      for (const c of msg.changes) {
        if (c.op === "remove") rows.delete(c.id);
        else rows.set(c.row.id, c.row);
        const id = c.op === "remove" ? c.id : c.row.id;
        if (id === openId) refreshTimeline = true;
      }
      render();
      for (const c of msg.changes) {
        if (c.op !== "upsert") continue;
        const tr = tbody.querySelector('tr[data-session-id="' + CSS.escape(c.row.id) + '"]');
        if (tr) { tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash"); }
      }
      if (refreshTimeline) showTimeline(openId);
    });
    es.addEventListener("clock", (ev) => { offset = JSON.parse(ev.data).now_ms - Date.now(); });
    es.onerror = () => {
      conn.dataset.state = "down"; conn.textContent = "reconnecting…";
      // EventSource retries by itself unless the server refused the stream (e.g. the
      // login expired): then find out why (api() goes to the login form on a 401).
      if (es.readyState === EventSource.CLOSED) {
        setTimeout(() => api("api/csrf").then(connect, () => setTimeout(connect, 2000)), 1000);
      }
    };
  }

  // ---------------------------------------------------------------- actions
  const confirmDialog = $("#confirm");
  function confirmThen(text, run) {
    $("#confirm-text").textContent = text;
    confirmDialog.onclose = () => { if (confirmDialog.returnValue === "yes") run(); };
    confirmDialog.returnValue = "";
    confirmDialog.showModal();
  }
  confirmDialog.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-confirm]");
    if (b) confirmDialog.close(b.dataset.confirm);
  });

  async function act(path, label) {
    try { await api(path, {method: "POST"}); flash(label + ": done"); }
    catch (e) { flash(label + " failed: " + e.message, "error"); }
  }

  tbody.addEventListener("click", (ev) => {
    const el = ev.target.closest("[data-action]");
    if (!el) return;
    ev.preventDefault();
    const id = el.closest("tr").dataset.sessionId;
    const action = el.dataset.action;
    const path = "api/sessions/" + encodeURIComponent(id) + "/" + action;
    if (action === "timeline") showTimeline(id);
    else if (action === "terminate") {
      confirmThen("Terminate the pod of session " + id + " now?", () => act(path, "Terminate " + id));
    } else act(path, action[0].toUpperCase() + action.slice(1) + " " + id);
  });

  for (const el of document.querySelectorAll("[data-filter]")) {
    el.addEventListener("input", render);
    el.addEventListener("change", render);  // selects changed by script fire only this one
  }

  // ---------------------------------------------------------------- timeline
  async function showTimeline(id) {
    const data = await api("api/sessions/" + encodeURIComponent(id) + "/timeline").catch((e) => {
      flash("Timeline failed: " + e.message, "error"); return null; });
    if (!data) return;
    $("#timeline").hidden = false;
    $("#timeline-id").textContent = id;
    const list = $("#timeline-events");
    list.replaceChildren();
    for (const e of data.events) {
      const li = document.createElement("li");
      li.dataset.eventType = e.type;
      const when = document.createElement("span");
      when.className = "muted"; when.textContent = new Date(e.ts * 1000).toLocaleTimeString() + " ";
      const what = document.createElement("b"); what.textContent = e.type + " ";
      const detail = document.createElement("code"); detail.textContent = JSON.stringify(e.data);
      li.append(when, what, detail);
      list.appendChild(li);
    }
    if (!data.events.length) list.textContent = "No recorded events.";
  }
  $("#timeline-close").addEventListener("click", () => { $("#timeline").hidden = true; });

  // ---------------------------------------------------------------- orphans
  async function scanOrphans() {
    const btn = $("#scan-orphans");
    btn.disabled = true; btn.textContent = "Scanning…";
    try {
      const data = await api("api/orphans");
      const tb = $("#orphan-table tbody");
      tb.replaceChildren();
      for (const pod of data.pods) {
        const tr = document.createElement("tr");
        tr.dataset.podId = pod.id; tr.dataset.provider = pod.provider;
        const kind = pod.kind === "orphan" ? (pod.in_grace ? "orphan (in grace)" : "orphan") : "foreign";
        for (const [f, v] of [["provider", pod.provider], ["id", pod.id], ["name", pod.name],
                              ["status", pod.status], ["age", dur(pod.age_ms)], ["kind", kind]]) {
          const td = document.createElement("td"); td.dataset.field = f; td.textContent = v; tr.appendChild(td);
        }
        const td = document.createElement("td");
        if (pod.terminable) {
          const b = document.createElement("button");
          b.type = "button"; b.className = "danger"; b.dataset.action = "terminate"; b.textContent = "Terminate";
          td.appendChild(b);
        }
        tr.appendChild(td);
        tb.appendChild(tr);
      }
      $("#orphan-note").textContent = !data.providers.length
        ? "ATLAS_REAP_PROVIDERS is not set: no provider to list."
        : (data.pods.length ? "" : "No untracked pods on " + data.providers.join(", ") + ".");
      if (data.errors.length) $("#orphan-note").textContent = "Errors: " + data.errors.join("; ");
      $("#orphan-table").hidden = !data.pods.length;
    } catch (e) { flash("Scan failed: " + e.message, "error"); }
    finally { btn.disabled = false; btn.textContent = "Scan providers"; }
  }
  $("#scan-orphans").addEventListener("click", scanOrphans);
  $("#orphan-table tbody").addEventListener("click", (ev) => {
    const b = ev.target.closest('[data-action="terminate"]');
    if (!b) return;
    const tr = b.closest("tr");
    const {podId, provider} = tr.dataset;
    confirmThen("Terminate untracked pod " + podId + " (" + provider + ") now?", async () => {
      try {
        await api("api/orphans/" + encodeURIComponent(provider) + "/" + encodeURIComponent(podId) + "/terminate",
                  {method: "POST"});
        flash("Terminate " + podId + ": queued"); b.disabled = true;
      } catch (e) { flash("Terminate " + podId + " failed: " + e.message, "error"); }
    });
  });

  // ---------------------------------------------------------------- health
  function setField(name, text, cls) {
    const el = document.querySelector('#health [data-field="' + name + '"]');
    el.textContent = text; el.className = cls || "";
  }
  async function health() {
    let h;
    try { h = await api("api/health"); } catch (e) { setField("reaper", "unreachable", "bad"); return; }
    setField("reaper", h.reaper_ok ? "sweeping" : "NOT sweeping", h.reaper_ok ? "good" : "bad");
    setField("last_sweep", h.last_sweep_age_ms === null ? "never" : dur(h.last_sweep_age_ms) + " ago");
    setField("due_sessions", String(h.due_sessions));
    setField("open_intents", String(h.open_intents));
    setField("pending_stops", String(h.pending_stops));
    setField("terminate_retries", String(h.terminate_retries), h.terminate_retries ? "bad" : "");
    setField("orphans_reaped", String(h.orphans_reaped));
    setField("sweeps", String(h.stats.sweeps || 0));
    setField("data_loss_grace", h.data_loss_grace ? "ACTIVE" : "no", h.data_loss_grace ? "bad" : "");
    for (const [key, listId, fmt] of [
      ["jobs_in_flight", "#jobs", j => j.id + " · " + j.status + " · " + (j.endpoint || "")],
      ["deploys_in_flight", "#deploys", d => d.ticket + " · " + (d.last_type || "") + " · quiet " + dur(d.silent_ms)]]) {
      const ul = $(listId); ul.replaceChildren();
      for (const item of h[key]) { const li = document.createElement("li"); li.textContent = fmt(item); ul.appendChild(li); }
      if (!h[key].length) { const li = document.createElement("li"); li.className = "muted"; li.textContent = "none"; ul.appendChild(li); }
    }
  }

  connect();
  health();
  setInterval(tick, 1000);
  setInterval(health, 5000);
})();
