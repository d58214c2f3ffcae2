// DXF dashboard: polls the JSON endpoints (docs/dashboard.md) and redraws the current view.
// No framework and no build step: the file ships as it is in the wheel and works offline.
"use strict";

const state = { config: { actions: false, poll_interval: 1.0 }, timer: null, busy: false };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

function rate(task) {
  const parts = [];
  if (task.rows_per_second) parts.push(Math.round(task.rows_per_second).toLocaleString() + " rows/s");
  if (task.bytes_per_second) parts.push(humanBytes(task.bytes_per_second) + "/s");
  return parts.length ? parts.join(" · ") : "–";
}

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }

function stateBadge(value) { return el("span", { class: "state state-" + value }, value); }

function bar(step) {
  const pct = Math.round(step.progress * 100);
  return el("div", { class: "bar" + (step.total && step.finished === step.total ? " done" : ""),
                     "data-step": step.step, "data-finished": step.finished, "data-total": step.total,
                     title: "step " + step.step + ": " + JSON.stringify(step.counts) },
    el("span", { style: "width:" + pct + "%" }),
    el("em", {}, "step " + step.step + ": " + step.finished + "/" + step.total));
}

function stepText(task) {
  if (task.step_count === 0) return task.step_name;
  return task.step_index + " of " + task.step_count + (task.done ? "" : "+") ;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || (response.status + " " + response.statusText));
  return body;
}

async function act(key, action) {
  let body = null;
  if (action === "modify") {
    const answer = window.prompt("New concurrency (slots per node) for " + key + ":");
    if (answer === null || answer.trim() === "") return;
    body = JSON.stringify({ concurrency: Number(answer) });
  }
  try {
    await api("/api/tasks/" + encodeURIComponent(key) + "/" + action, {
      method: "POST", headers: { "X-DXF-Request": "1", "Content-Type": "application/json" }, body });
    setStatus(action + " requested for " + key, false);
  } catch (err) {
    setStatus(action + " failed: " + err.message, true);
  }
  refresh();
}

function actionButtons(task) {
  if (!state.config.actions) return null;
  const allowed = task.allowed_actions || [];
  if (!allowed.length) return null;
  return el("span", { class: "actions" },
    allowed.map((a) => el("button", { type: "button", "data-action": a, "data-key": task.key,
                                      onclick: () => act(task.key, a) }, a)));
}

function setStatus(text, isError) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.className = "status" + (isError ? " error" : "");
}

// ---------------------------------------------------------------- views

async function tasksView() {
  const data = await api("/api/tasks");
  const head = ["Key", "Type", "State", "Step", "Progress", "Rate", "Elapsed", "ETA", "Error"];
  if (state.config.actions) head.push("Actions");
  const rows = data.tasks.map((t) => el("tr", { class: "task", "data-key": t.key, "data-state": t.state },
    el("td", {}, el("a", { href: "/tasks/" + encodeURIComponent(t.key) }, t.key)),
    el("td", {}, t.type),
    el("td", {}, stateBadge(t.state)),
    el("td", { class: "step" }, stepText(t)),
    el("td", { class: "progress" }, t.steps.length ? t.steps.map(bar) : el("span", { class: "muted" }, "not planned")),
    el("td", { class: "num" }, rate(t)),
    el("td", { class: "num" }, duration(t.elapsed_seconds)),
    el("td", { class: "num" }, duration(t.eta_seconds)),
    el("td", { class: "error" }, t.error || ""),
    state.config.actions ? el("td", {}, actionButtons(t)) : null));
  return [el("h1", {}, "Tasks"),
    rows.length ? el("table", { id: "tasks" }, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
                     el("tbody", {}, rows))
                : el("p", { class: "empty" }, "No task yet: submit one with `celery -A proj dxf submit`.")];
}

function subtaskTable(id, list, withError) {
  if (!list.length) return el("p", { class: "empty", id }, "none");
  return el("table", { id },
    el("thead", {}, el("tr", {}, ["Subtask", "Step", "Ordinal", "Node", "State", "Duration", withError ? "Error" : ""]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, list.map((s) => el("tr", {},
      el("td", {}, s.id), el("td", {}, s.step), el("td", {}, s.ordinal), el("td", {}, s.node),
      el("td", {}, stateBadge(s.state)), el("td", { class: "num" }, duration(s.duration_seconds)),
      el("td", { class: "error" }, withError ? (s.error || "") : "")))));
}

async function taskView(key) {
  const t = await api("/api/tasks/" + encodeURIComponent(key));
  const stepRows = [];
  for (const s of t.steps) {
    for (const n of s.nodes) {
      stepRows.push(el("tr", { class: "step-node", "data-step": s.step, "data-node": n.node },
        el("td", {}, s.step), el("td", {}, n.node),
        el("td", {}, Object.entries(n.counts).map(([k, v]) => k + " " + v).join(", "))));
    }
  }
  return [
    el("h1", {}, "Task ", el("span", { id: "task-key" }, t.key), " ", stateBadge(t.state)),
    el("dl", { class: "facts" },
      el("dt", {}, "id"), el("dd", {}, t.id),
      el("dt", {}, "type"), el("dd", {}, t.type),
      el("dt", {}, "step"), el("dd", {}, stepText(t)),
      el("dt", {}, "concurrency"), el("dd", {}, t.concurrency),
      el("dt", {}, "elapsed"), el("dd", {}, duration(t.elapsed_seconds)),
      el("dt", {}, "ETA"), el("dd", {}, duration(t.eta_seconds)),
      el("dt", {}, "rate"), el("dd", {}, rate(t)),
      el("dt", {}, "stored in"), el("dd", {}, t.source),
      el("dt", {}, "error"), el("dd", { class: "error" }, t.error || "–")),
    actionButtons(t),
    el("h2", {}, "Steps"),
    el("div", { id: "step-bars" }, t.steps.length ? t.steps.map(bar) : el("p", { class: "empty" }, "not planned yet")),
    el("h2", {}, "Subtasks per node"),
    stepRows.length ? el("table", { id: "subtasks-per-node" },
      el("thead", {}, el("tr", {}, ["Step", "Node", "Subtasks by state"].map((h) => el("th", {}, h)))),
      el("tbody", {}, stepRows)) : el("p", { class: "empty" }, "none"),
    el("h2", {}, "Slowest subtasks"), subtaskTable("slowest", t.slowest, false),
    el("h2", {}, "Failed subtasks"), subtaskTable("failed", t.failed, true),
    el("h2", {}, "Timeline"),
    el("table", { id: "timeline" }, el("tbody", {}, t.timeline.map((e) =>
      el("tr", {}, el("td", {}, when(e.time)), el("td", {}, e.event))))),
  ];
}

async function nodesView() {
  const data = await api("/api/nodes");
  const rows = data.nodes.map((n) => el("tr", { class: "node", "data-node": n.id },
    el("td", {}, n.id), el("td", {}, n.role || "–"),
    el("td", { class: "num slots" }, n.slots_used + "/" + n.slots),
    el("td", { class: "num executors" }, n.executors),
    el("td", { class: "num" }, n.heartbeat_age_seconds === null ? "–" : n.heartbeat_age_seconds.toFixed(1) + "s ago"),
    el("td", {}, n.alive === false ? el("span", { class: "state state-failed" }, "silent") : ""),
    el("td", { class: "lease" }, n.lease_holder ? "scheduler" : "")));
  return [el("h1", {}, "Nodes"),
    el("p", { class: "muted" }, "Scheduler lease: " + (data.scheduler_lease_holder || "nobody")),
    rows.length ? el("table", { id: "nodes" },
      el("thead", {}, el("tr", {}, ["Node", "Role", "Slots used", "Executors", "Heartbeat", "", "Lease"]
        .map((h) => el("th", {}, h)))), el("tbody", {}, rows))
                : el("p", { class: "empty" }, "No node registered: start a worker of an app that calls DXF(app).")];
}

function route() {
  const path = window.location.pathname;
  document.getElementById("nav-tasks").className = path === "/" || path.startsWith("/tasks/") ? "active" : "";
  document.getElementById("nav-nodes").className = path === "/nodes" ? "active" : "";
  if (path === "/nodes") return nodesView;
  if (path.startsWith("/tasks/")) return () => taskView(decodeURIComponent(path.slice("/tasks/".length)));
  return tasksView;
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const content = await route()();
    document.getElementById("view").replaceChildren(...content.filter((c) => c));
    if (!document.getElementById("status").classList.contains("error")) {
      setStatus("updated " + new Date().toLocaleTimeString(), false);
    }
    document.body.dataset.updated = String(Date.now());
  } catch (err) {
    setStatus("cannot load: " + err.message, true);
    document.getElementById("view").replaceChildren(el("p", { class: "error", id: "load-error" }, err.message));
  } finally {
    state.busy = false;
  }
}

async function start() {
  try { state.config = await api("/api/config"); } catch (err) { setStatus(err.message, true); }
  await refresh();
  state.timer = window.setInterval(() => {
    // An action's message stays for one poll, then the normal status returns.
    const status = document.getElementById("status");
    if (status.classList.contains("error") && !document.getElementById("load-error")) status.className = "status";
    refresh();
  }, Math.max(250, state.config.poll_interval * 1000));
}

start();
