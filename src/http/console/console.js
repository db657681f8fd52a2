"use strict";
// The chime console. It calls the public /v1 API only (API.md), renders with DOM nodes and
// textContent (never markup from data), and refreshes the view on screen every few seconds.

const TOKEN_KEY = "chime.console.token";
const RANGES = {
  // window length, bucket length: 60, 96 and 168 bars
  hour: [3600e3, 60e3],
  day: [86400e3, 900e3],
  week: [7 * 86400e3, 3600e3],
};
const STAGES = ["enqueue_get", "enqueue_put", "dequeue_get", "dequeue_get_message", "dequeue_put"];
const REFRESH_MS = { timer: 1000, topics: 2000, transactions: 2000, storage: 2000 };
const MAX_TOPICS = 100;
const ARM_MS = 5000; // how long a confirm button stays armed

const ui = {
  view: "timer",
  range: "hour",
  lastFired: null, // {at, fired} of the previous stats answer, for the fire rate
  tokenWaiters: [],
  kick: false, // a refresh is asked for
  armed: {}, // confirm buttons armed: key -> until (ms)
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

const $ = (sel) => document.querySelector(sel);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const e = tag === "svg" || tag === "rect" || tag === "text" || tag === "line" || tag === "title" || tag === "g"
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.setAttribute("class", v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
const pad = (n) => String(n).padStart(2, "0");
function fmtTime(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}
function fmtDuration(ms) {
  ms = Math.max(0, Math.round(ms));
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60e3) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600e3) return `${Math.floor(ms / 60e3)} min ${Math.floor((ms % 60e3) / 1000)} s`;
  return `${Math.floor(ms / 3600e3)} h ${Math.floor((ms % 3600e3) / 60e3)} min`;
}
const enc = encodeURIComponent;

// ---- the API, with the token ----

/** Calls the API; on 401 asks for the token and tries again with it. */
async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 401) {
      // A token entered while this request was on its way: try again with it, ask nothing.
      if (sessionStorage.getItem(TOKEN_KEY) !== token) continue;
      await askToken(token ? "That token was refused." : "");
      continue;
    }
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!r.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(r.status, err.code, err.message);
    }
    return data;
  }
}

/** Shows the token prompt (once, however many calls wait) and resolves when a token is set. */
function askToken(why) {
  if (!$("#token-dialog").hidden) {
    // Asked already: wait for the same answer.
    return new Promise((resolve) => ui.tokenWaiters.push(resolve));
  }
  sessionStorage.removeItem(TOKEN_KEY);
  $("#token-error").textContent = why;
  $("#token-dialog").hidden = false;
  $("#token-input").focus();
  return new Promise((resolve) => ui.tokenWaiters.push(resolve));
}

$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("#token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token-input").value = "";
  $("#token-dialog").hidden = true;
  const waiters = ui.tokenWaiters.splice(0);
  waiters.forEach((w) => w());
});

function setStatus(text, isError) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("error", !!isError);
}

/**
 * Replaces a table body's rows (a placeholder row when there are none), unless they would be the
 * same: a refresh that changes nothing leaves the nodes alone, so a button keeps its hover and
 * a click in flight lands. Ages are filled in afterwards ([`showAges`]), outside the comparison.
 */
const drawn = new WeakMap(); // tbody -> the markup of the rows it shows

function fillRows(tbody, rows, emptyText, columns) {
  const next = rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: columns }, emptyText))];
  const html = next.map((r) => r.outerHTML).join("");
  if (drawn.get(tbody) !== html) {
    tbody.replaceChildren(...next);
    drawn.set(tbody, html);
  }
  showAges(tbody);
}

/** An element whose text says how long ago `ms` was (kept current by [`showAges`]). */
const since = (tag, ms) => el(tag, { "data-since": ms });

function showAges(root) {
  root.querySelectorAll("[data-since]").forEach((e) => {
    const ms = Number(e.dataset.since);
    e.textContent = `${fmtTime(ms)} (${fmtDuration(Date.now() - ms)} ago)`;
  });
}

/**
 * A button that acts on its second click: the first arms it for `ARM_MS`. `key` names what it acts
 * on, so a button drawn again by a refresh stays armed.
 */
function confirmButton(label, cls, key, action) {
  const b = el("button", { type: "button", class: cls }, label);
  const left = () => (ui.armed[key] || 0) - Date.now();
  const arm = (on) => {
    b.classList.toggle("armed", on);
    b.textContent = on ? `Confirm ${label.toLowerCase()}` : label;
    // Disarm when the arming ends (also for a button drawn again while armed).
    if (on) setTimeout(() => { if (left() <= 0) arm(false); }, left() + 50);
  };
  arm(left() > 0);
  b.addEventListener("click", async () => {
    if (left() <= 0) {
      ui.armed[key] = Date.now() + ARM_MS;
      arm(true);
      return;
    }
    delete ui.armed[key];
    b.disabled = true;
    try { await action(); } finally { b.disabled = false; arm(false); }
  });
  return b;
}

// ---- Timer ----

async function refreshTimer() {
  const [stats, cong] = await Promise.all([api("GET", "/v1/timer/stats"), loadCongestion()]);
  $("#timer-pending").textContent = fmtInt(stats.pending_total);
  $("#timer-enqueue-lag").textContent = fmtInt(stats.enqueue_lag);
  $("#timer-dequeue-lag").textContent = fmtDuration(stats.dequeue_lag_ms);
  $("#timer-fired").textContent = `${fmtInt(stats.fired)} / ${fmtInt(stats.cancelled)}`;
  const now = performance.now();
  if (ui.lastFired && now > ui.lastFired.at) {
    const rate = ((stats.fired - ui.lastFired.fired) * 1000) / (now - ui.lastFired.at);
    $("#timer-fire-rate").textContent = `${fmtInt(Math.round(rate))}/s`;
  }
  ui.lastFired = { at: now, fired: stats.fired };

  const rows = STAGES.map((name) => {
    const s = stats.stages[name] || { queue_depth: 0, queue_capacity: 0, processed: 0 };
    const share = s.queue_capacity ? Math.min(1, s.queue_depth / s.queue_capacity) : 0;
    return el("tr", { "data-stage": name },
      el("td", {}, name),
      el("td", { class: "num depth" }, fmtInt(s.queue_depth)),
      el("td", { class: "num capacity" }, s.queue_capacity ? fmtInt(s.queue_capacity) : "–"),
      el("td", {}, el("div", { class: share > 0.8 ? "fill hot" : "fill" }, el("div", { style: `width:${(share * 100).toFixed(1)}%` }))),
      el("td", { class: "num processed" }, fmtInt(s.processed)));
  });
  $("#stages tbody").replaceChildren(...rows);
  for (const k of ["count", "p50", "p90", "p99", "p999", "max"]) {
    $(`#lateness [data-k="${k}"]`).textContent = fmtInt(stats.lateness_ms[k]);
  }
  drawChart(cong);
}

/** The window of the chosen range, from the current bucket's start (so bars line up). */
function loadCongestion() {
  const [span, bucket] = RANGES[ui.range];
  const from = Math.floor(Date.now() / bucket) * bucket;
  return api("GET", `/v1/timer/congestion?from_ms=${from}&to_ms=${from + span}&bucket_ms=${bucket}`)
    .then((c) => Object.assign(c, { bucket_ms: bucket, range: ui.range }));
}

function drawChart(c) {
  const svg = $("#chart");
  const W = 960, H = 240, left = 48, right = 8, top = 12, bottom = 28;
  const n = c.buckets.length;
  const max = Math.max(1, ...c.buckets.map((b) => b.count));
  const bw = (W - left - right) / Math.max(1, n);
  const ch = H - top - bottom;
  const nodes = [
    el("line", { class: "axis", x1: left, y1: top + ch, x2: W - right, y2: top + ch }),
    el("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, fmtInt(max)),
    el("text", { x: left - 6, y: top + ch, "text-anchor": "end" }, "0"),
  ];
  let total = 0;
  c.buckets.forEach((b, i) => {
    total += b.count;
    const h = (b.count / max) * ch;
    const end = Math.min(b.start_ms + c.bucket_ms, c.buckets[n - 1].start_ms + c.bucket_ms);
    nodes.push(el("rect", {
      class: "bar", x: (left + i * bw + 0.5).toFixed(2), y: (top + ch - h).toFixed(2),
      width: Math.max(0.5, bw - 1).toFixed(2), height: h.toFixed(2),
      "data-start": b.start_ms, "data-count": b.count,
    }, el("title", {}, `${fmtTime(b.start_ms)} – ${fmtTime(end)}: ${fmtInt(b.count)} due`)));
  });
  const ticks = 6;
  for (let t = 0; t <= ticks; t++) {
    const i = Math.min(n - 1, Math.round((t * (n - 1)) / ticks));
    if (i < 0) break;
    const d = new Date(c.buckets[i].start_ms);
    const label = c.range === "week"
      ? `${d.toLocaleDateString("en-US", { weekday: "short" })} ${pad(d.getHours())}:00`
      : `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    nodes.push(el("text", { x: (left + i * bw + bw / 2).toFixed(2), y: H - 8, "text-anchor": "middle" }, label));
  }
  svg.replaceChildren(...nodes);
  svg.setAttribute("data-buckets", n);
  $("#chart-total").textContent = `${fmtInt(total)} due in the window, ${fmtInt(c.pending_total)} pending in all`;
}

$("#chart-range").addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-range]");
  if (!b) return;
  ui.range = b.dataset.range;
  document.querySelectorAll("#chart-range button").forEach((x) => x.classList.toggle("active", x === b));
  refreshNow();
});

// ---- Topics, groups, dead letters, blocked FIFO groups ----

async function refreshTopics() {
  const { topics } = await api("GET", "/v1/topics");
  topics.sort((a, b) => a.name.localeCompare(b.name));
  const shown = topics.slice(0, MAX_TOPICS);
  $("#topics-note").textContent = topics.length > shown.length
    ? `Showing the first ${shown.length} of ${topics.length} topics.` : "";
  const groups = await Promise.all(shown.map((t) =>
    api("GET", `/v1/topics/${enc(t.name)}/groups`).then((g) => g.groups, () => [])));
  const blocked = await Promise.all(shown.flatMap((t, i) => groups[i].filter((g) => g.fifo).map((g) =>
    api("GET", `/v1/topics/${enc(t.name)}/groups/${enc(g.name)}/blocked?limit=20`)
      .then((b) => b.blocked.map((x) => ({ topic: t.name, group: g.name, ...x })), () => []))));

  const isDlq = (name) => name.startsWith("%DLQ%");
  fillRows($("#topics-table tbody"), shown.map((t) => el("tr", { "data-topic": t.name },
    el("td", {}, t.name, isDlq(t.name) ? [" ", el("span", { class: "badge" }, "dead letters")] : null),
    el("td", { class: "num" }, fmtInt(t.queues)),
    el("td", { class: "num messages" }, fmtInt(t.messages)),
    el("td", { class: "num scheduled" }, fmtInt(t.scheduled)))), "No topics yet.", 4);

  const groupRows = [];
  shown.forEach((t, i) => groups[i].forEach((g) => groupRows.push(el("tr", { "data-topic": t.name, "data-group": g.name },
    el("td", {}, t.name), el("td", {}, g.name),
    el("td", { class: "num backlog" }, fmtInt(g.backlog)),
    el("td", { class: "num in_flight" }, fmtInt(g.in_flight)),
    el("td", { class: "num dead_lettered" }, fmtInt(g.dead_lettered)),
    el("td", { class: "num expired" }, fmtInt(g.expired)),
    el("td", { class: "fifo" }, g.fifo ? "yes" : "no"),
    el("td", { class: "num" }, fmtInt(g.max_delivery_attempts))))));
  fillRows($("#groups-table tbody"), groupRows, "No consumer groups yet.", 8);

  fillRows($("#dlq-table tbody"), shown.map((t, i) => [t, groups[i]]).filter(([t]) => isDlq(t.name)).map(([t, g]) =>
    el("tr", { "data-topic": t.name }, el("td", {}, t.name), el("td", { class: "num messages" }, fmtInt(t.messages)),
      el("td", {}, g.length ? g.map((x) => x.name).join(", ") : "–"))), "No dead letters.", 3);

  fillRows($("#blocked-table tbody"), blocked.flat().map((b) => el("tr", { "data-topic": b.topic, "data-group": b.group, "data-message-group": b.message_group },
    el("td", {}, b.topic), el("td", {}, b.group), el("td", { class: "message_group" }, b.message_group),
    el("td", { class: "id" }, b.message_id), since("td", b.since_ms),
    el("td", { class: "num attempts" }, fmtInt(b.attempts)), el("td", { class: "num waiting" }, fmtInt(b.waiting)))),
  "No FIFO message group is waiting.", 7);
}

// ---- Messages: find by id or key, cancel ----

async function findMessages() {
  const topic = $("#find-topic").value.trim();
  const value = $("#find-value").value.trim();
  const by = $("#find-by").value;
  $("#find-error").textContent = "";
  let rows = [];
  try {
    if (by === "id") {
      const m = await api("GET", `/v1/topics/${enc(topic)}/messages/${enc(value)}`);
      rows = [{ ...m, tag: undefined, keys: undefined }];
    } else {
      rows = (await api("GET", `/v1/topics/${enc(topic)}/messages?key=${enc(value)}&limit=100`)).messages;
    }
  } catch (e) {
    $("#find-error").textContent = e.status === 404 ? "No such message." : `${e.code || "error"}: ${e.message}`;
  }
  fillRows($("#find-result tbody"), rows.map((m) => messageRow(topic, m)), "Nothing found.", 6);
}

function messageRow(topic, m) {
  const state = el("td", { class: `state state-${m.state}` }, m.state);
  const action = el("td", {});
  if (m.state === "scheduled") {
    action.append(confirmButton("Cancel", "cancel", `cancel:${topic}:${m.message_id}`, async () => {
      try {
        const r = await api("DELETE", `/v1/topics/${enc(topic)}/messages/${enc(m.message_id)}`);
        state.textContent = r.state;
        state.className = `state state-${r.state}`;
        action.replaceChildren();
      } catch (e) {
        $("#find-error").textContent = `${e.code || "error"}: ${e.message}`;
      }
    }));
  }
  return el("tr", { "data-id": m.message_id },
    el("td", { class: "id" }, m.message_id),
    el("td", {}, m.tag === undefined ? "" : m.tag ?? "–"),
    el("td", {}, m.keys === undefined ? "" : (m.keys || []).join(", ")),
    el("td", {}, fmtTime(m.deliver_at_ms)),
    state, action);
}

$("#find-form").addEventListener("submit", (ev) => { ev.preventDefault(); findMessages(); });

// ---- Transactions ----

async function refreshTransactions() {
  const { transactions } = await api("GET", "/v1/transactions?state=prepared&limit=100");
  fillRows($("#txn-table tbody"), transactions.map((t) => el("tr", { "data-txn": t.transaction_id },
    el("td", { class: "id" }, t.transaction_id),
    el("td", {}, t.producer_group),
    since("td", t.prepared_at_ms),
    el("td", { class: "num checks" }, fmtInt(t.checks)),
    el("td", {}, `${t.messages.length} → ${[...new Set(t.messages.map((m) => m.topic))].join(", ")}`),
    el("td", {}, resolveButton(t, "commit"), " ", resolveButton(t, "rollback")))), "No prepared transaction.", 6);
}

function resolveButton(t, how) {
  return confirmButton(how === "commit" ? "Commit" : "Rollback", how, `${how}:${t.transaction_id}`, async () => {
    $("#txn-error").textContent = "";
    try {
      await api("POST", `/v1/transactions/${enc(t.transaction_id)}/${how}`);
    } catch (e) {
      $("#txn-error").textContent = `${e.code || "error"}: ${e.message}`;
    }
    await refreshTransactions();
  });
}

// ---- Storage ----

async function refreshStorage() {
  const s = await api("GET", "/v1/storage");
  const used = s.disk.used_ratio;
  const bar = $("#disk-bar");
  bar.firstElementChild.style.width = `${(used * 100).toFixed(1)}%`;
  bar.classList.toggle("soft", used >= 0.85);
  bar.classList.toggle("hard", !s.accepting);
  const kv = (title, entries) => el("div", {}, el("h3", {}, title), el("dl", { class: "kv" },
    entries.flatMap(([label, key, text]) => [el("dt", {}, label), el("dd", { "data-k": key, "data-v": String(keyValue(s, key)) }, text)])));
  $("#storage").replaceChildren(
    kv("Disk", [
      ["Used", "disk.used_ratio", `${(used * 100).toFixed(1)} %`],
      ["Free", "disk.free_bytes", fmtBytes(s.disk.free_bytes)],
      ["Total", "disk.total_bytes", fmtBytes(s.disk.total_bytes)],
      ["Accepting sends", "accepting", s.accepting ? "yes" : "no (over the hard limit)"],
    ]),
    kv("Commit log", [
      ["Segments", "commitlog.segments", fmtInt(s.commitlog.segments)],
      ["Size", "commitlog.bytes", fmtBytes(s.commitlog.bytes)],
      ["First offset", "commitlog.first_offset", fmtInt(s.commitlog.first_offset)],
      ["Oldest record", "commitlog.oldest_store_ms", fmtTime(s.commitlog.oldest_store_ms)],
    ]),
    kv("Pinned beyond retention", [
      ["Segments", "pinned.segments", fmtInt(s.pinned.segments)],
      ["Size", "pinned.bytes", fmtBytes(s.pinned.bytes)],
      ["Pending messages", "pinned.pending_messages", fmtInt(s.pinned.pending_messages)],
    ]),
    kv("Reclaimed since start", [
      ["Segments", "reclaimed.segments", fmtInt(s.reclaimed.segments)],
      ["Size", "reclaimed.bytes", fmtBytes(s.reclaimed.bytes)],
      ["Carried forward", "carried_forward", fmtInt(s.carried_forward)],
    ]),
    s.timer ? kv("Timer files", [
      ["Timer-log segments", "timer.timer_log_segments", fmtInt(s.timer.timer_log_segments)],
      ["State files", "timer.state_files", fmtInt(s.timer.state_files)],
      ["Moved ids", "timer.moved_ids", fmtInt(s.timer.moved_ids)],
      ["Reclaimed", "timer.timer_log_reclaimed_bytes", fmtBytes(s.timer.timer_log_reclaimed_bytes + s.timer.state_reclaimed_bytes)],
    ]) : null);
}

function keyValue(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? o : o[k]), obj);
}

// ---- Send a test message and watch it arrive ----

let watching = 0;

async function sendTest() {
  const topic = $("#send-topic").value.trim();
  const delay = Number($("#send-delay").value);
  $("#send-error").textContent = "";
  let sent;
  try {
    sent = await api("POST", `/v1/topics/${enc(topic)}/messages`, { body: $("#send-body").value, delay_ms: delay });
  } catch (e) {
    $("#send-error").textContent = `${e.code || "error"}: ${e.message}`;
    return;
  }
  const result = $("#send-result");
  result.hidden = false;
  result.querySelector('[data-k="message_id"]').textContent = sent.message_id;
  result.querySelector('[data-k="deliver_at"]').textContent = fmtTime(sent.deliver_at_ms);
  result.querySelector('[data-k="seen"]').textContent = "";
  const state = $("#send-state");
  const show = (s) => { state.textContent = s; state.className = `state-${s}`; };
  show(sent.state);
  const me = ++watching;
  while (me === watching && state.textContent === "scheduled") {
    const left = sent.deliver_at_ms - Date.now();
    await sleep(Math.min(250, Math.max(20, left)));
    if (me !== watching) return;
    try {
      const m = await api("GET", `/v1/topics/${enc(topic)}/messages/${enc(sent.message_id)}`);
      show(m.state);
      if (m.state !== "scheduled") {
        result.querySelector('[data-k="seen"]').textContent = `${fmtTime(Date.now())} (due ${fmtTime(m.deliver_at_ms)})`;
      } else {
        result.querySelector('[data-k="seen"]').textContent = `due in ${fmtDuration(m.deliver_at_ms - Date.now())}`;
      }
    } catch (e) {
      $("#send-error").textContent = `${e.code || "error"}: ${e.message}`;
      return;
    }
  }
}

$("#send-form").addEventListener("submit", (ev) => { ev.preventDefault(); sendTest(); });

// ---- Views and the refresh loop ----

const REFRESH = { timer: refreshTimer, topics: refreshTopics, transactions: refreshTransactions, storage: refreshStorage };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let wake = null;

function showView() {
  const name = (location.hash || "#timer").slice(1);
  ui.view = document.getElementById(`view-${name}`) ? name : "timer";
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== `view-${ui.view}`; });
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === ui.view));
  refreshNow();
}

/** Refreshes the view on screen now (after the refresh in progress, if any). */
function refreshNow() {
  ui.kick = true;
  if (wake) wake();
}

async function loop() {
  const refreshed = {};
  for (;;) {
    ui.kick = false;
    const view = ui.view;
    const refresh = REFRESH[view];
    if (refresh) {
      try {
        await refresh();
        setStatus(`updated ${fmtTime(Date.now()).slice(11, 19)}`);
        // How many refreshes each view has had: tests wait on it.
        refreshed[view] = (refreshed[view] || 0) + 1;
        document.body.setAttribute(`data-refreshed-${view}`, refreshed[view]);
      } catch (e) {
        setStatus(`${view}: ${e.code || "error"}: ${e.message}`, true);
      }
    }
    if (ui.kick) continue;
    await new Promise((r) => {
      wake = r;
      setTimeout(r, REFRESH_MS[view] || 2000);
    });
    wake = null;
  }
}

window.addEventListener("hashchange", showView);
showView();
loop();
