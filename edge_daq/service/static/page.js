// edge-daq status page: polls /api/page every 1.5 s (and /api/trends every 10 s) and renders it.
// No framework and no build step; every value goes in through textContent, never as HTML.
"use strict";

const POLL_MS = 1500;
const TREND_MS = 10000;
let rig = decodeURIComponent(location.hash.slice(1)) || null;
let last = null;
let trends = {};
let selectedCell = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function stateClass(state) { return "state-" + String(state).replace(/\s+/g, "-"); }
function badge(state, label) { return el("span", {class: "badge " + stateClass(state), "data-state": state, text: label || state}); }

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4).replace(/\.?0+$/, "");
  return String(value);
}
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}
function hours(h) {
  if (h === null || h === undefined) return "–";
  return h < 1 ? duration(h * 3600) : h.toFixed(h < 10 ? 3 : 1) + " h";
}

async function getJSON(path) {
  const response = await fetch(path, {cache: "no-store", credentials: "omit"});
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

async function poll(once) {
  try {
    const query = rig ? "?rig=" + encodeURIComponent(rig) : "";
    last = await getJSON("/api/page" + query);
    document.body.classList.remove("offline");
    render(last);
  } catch (error) {
    document.body.classList.add("offline");
    const health = document.getElementById("gw-health");
    health.className = "badge state-offline";
    health.dataset.state = "offline";
    health.textContent = "no connection";
    document.getElementById("gw-reason").textContent = "the daemon does not answer (restarting?): retrying";
  } finally {
    if (!once) setTimeout(poll, POLL_MS);
  }
}

async function pollTrends() {
  try {
    const query = rig || (last && last.rig) ? "?rig=" + encodeURIComponent(rig || last.rig) : "";
    trends = (await getJSON("/api/trends" + query)).trends || {};
    if (last) renderInstruments(last);
  } catch (error) { /* the page poll shows the connection state */ }
  finally { setTimeout(pollTrends, TREND_MS); }
}

function render(doc) {
  renderGateway(doc);
  renderTabs(doc);
  renderRigs(doc);
  renderBoards(doc);
  renderInstruments(doc);
  renderEvents(doc);
  renderOutputs(doc);
  renderControl(doc);
}

function renderGateway(doc) {
  const gw = doc.gateway;
  document.getElementById("gw-name").textContent = gw.name;
  document.getElementById("gw-site").textContent = gw.site ? "· " + gw.site : "";
  document.title = gw.name + " · edge-daq";
  const health = document.getElementById("gw-health");
  const state = gw.healthy ? "ok" : "unhealthy";
  health.className = "badge " + stateClass(state);
  health.dataset.state = state;
  health.textContent = gw.healthy ? "healthy" : "unhealthy";
  document.getElementById("gw-reason").textContent = gw.reason;
  document.getElementById("gw-facts").textContent =
    "edge-daq " + gw.version + " · up " + duration(gw.uptime_seconds) + " · config " + gw.config_hash;
}

function renderTabs(doc) {
  const nav = document.getElementById("rig-tabs");
  nav.replaceChildren();
  if (doc.rigs.length < 2) return;
  for (const card of doc.rigs) {
    const button = el("button", {text: card.rig, type: "button"});
    button.setAttribute("aria-selected", String(card.rig === doc.rig));
    button.addEventListener("click", () => { rig = card.rig; location.hash = encodeURIComponent(rig); selectedCell = null; poll(true); });
    nav.append(button);
  }
}

function renderRigs(doc) {
  const section = document.getElementById("rigs");
  section.replaceChildren(...doc.rigs.map((card) => {
    const node = el("article", {class: "card rig", "data-rig": card.rig});
    node.append(el("h3", {}, el("span", {text: card.rig}), badge(card.state)));
    if (card.test) node.append(el("div", {class: "test", text: card.test.id + " · " + card.test.kind}));
    if (card.stress_h !== undefined) {
      node.append(el("div", {class: "stress", text: hours(card.stress_h) + " stress"}));
      if (card.next_milestone_h !== null) {
        const bar = el("div", {class: "progress", title: "to the next milestone"});
        const fill = el("div");
        fill.style.width = Math.max(0, Math.min(100, card.progress * 100)).toFixed(1) + "%";
        bar.append(fill);
        node.append(bar, el("div", {class: "muted", text: "next milestone " + hours(card.next_milestone_h) +
          " (" + (card.progress * 100).toFixed(1) + " %)"}));
      }
      if (!card.holding && card.state !== "stopped" && card.state !== "no test") {
        node.append(el("div", {class: "exclusion", text: "stress not accruing: " + (card.reason || "excluded")}));
      }
      node.append(el("div", {class: "counts"},
        el("span", {"data-count": "active"}, el("b", {text: String(card.duts.active)}), " active"),
        el("span", {"data-count": "failed"}, el("b", {text: String(card.duts.failed)}), " failed"),
        el("span", {"data-count": "removed"}, el("b", {text: String(card.duts.removed)}), " removed")));
    }
    node.append(el("div", {class: "muted", text: card.instruments_up + " of " + card.instruments + " instruments up"}));
    return node;
  }));
}

function cellLabel(cell) { return cell.status === "empty" ? "no DUT" : cell.status; }

function renderBoards(doc) {
  document.getElementById("board-rig").textContent = doc.rig ? "· " + doc.rig : "";
  const holder = document.getElementById("boards");
  if (!doc.boards.length) { holder.replaceChildren(el("p", {class: "muted", text: "no instrument with channels: in this rig"})); }
  else holder.replaceChildren(...doc.boards.map((board) => {
    const grid = el("div", {class: "grid"});
    grid.style.gridTemplateColumns = "repeat(" + board.columns + ", minmax(3.2rem, 1fr))";
    if (board.order === "columns") { grid.style.gridAutoFlow = "column"; grid.style.gridTemplateRows = "repeat(" + board.rows + ", auto)"; }
    for (const cell of board.cells) {
      const button = el("button", {class: "cell " + stateClass(cell.status), type: "button",
        "data-socket": String(cell.socket), "data-state": cell.status, title: cellTitle(cell)},
        el("span", {class: "socket", text: String(cell.socket)}),
        el("span", {class: "label", text: cellLabel(cell)}),
        el("span", {class: "serial", text: cell.dut || ""}));
      button.addEventListener("click", () => { selectedCell = [board.instrument, cell.socket]; renderDetail(); });
      grid.append(button);
    }
    return el("div", {class: "board", "data-board": board.instrument, "data-rows": String(board.rows), "data-columns": String(board.columns)},
      el("h3", {text: board.instrument + " · " + board.cells.length + " sockets (" + board.rows + " × " + board.columns + ")"}), grid);
  }));
  renderDetail();
}

function cellTitle(cell) {
  const lines = ["socket " + cell.socket + ": " + cellLabel(cell)];
  if (cell.dut) lines.push("serial " + cell.dut + (cell.lot ? " · lot " + cell.lot : ""));
  if (cell.failure) lines.push("failed: " + cell.failure.rule + " = " + fmt(cell.failure.value) + " at " + hours(cell.failure.stress_h));
  for (const [name, value] of Object.entries(cell.values || {})) lines.push(name + " = " + fmt(value));
  return lines.join("\n");
}

function renderDetail() {
  const box = document.getElementById("cell-detail");
  const board = last && selectedCell && last.boards.find((b) => b.instrument === selectedCell[0]);
  const cell = board && board.cells.find((c) => c.socket === selectedCell[1]);
  if (!cell) { box.hidden = true; return; }
  const rows = [["socket", board.instrument + " / " + cell.socket], ["state", cellLabel(cell)]];
  if (cell.dut) rows.push(["serial", cell.dut]);
  if (cell.lot) rows.push(["lot", cell.lot]);
  if (cell.failure) {
    rows.push(["failure rule", cell.failure.rule + " (" + cell.failure.mode + ")"],
      ["value at failure", fmt(cell.failure.value) + " (limit " + cell.failure.limit + ")"],
      ["stress at failure", hours(cell.failure.stress_h)]);
  }
  for (const [name, value] of Object.entries(cell.values || {})) rows.push([name, fmt(value)]);
  const list = el("dl");
  for (const [term, value] of rows) list.append(el("dt", {text: term}), el("dd", {text: value}));
  const close = el("button", {type: "button", text: "close"});
  close.addEventListener("click", () => { selectedCell = null; renderDetail(); });
  box.replaceChildren(el("strong", {text: "Socket " + cell.socket + " "}), badge(cell.status, cellLabel(cell)), list, close);
  box.hidden = false;
}

function sparkline(points) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 100 20");
  svg.setAttribute("preserveAspectRatio", "none");
  const values = points.filter((v) => v !== null);
  if (values.length > 1) {
    const low = Math.min(...values), high = Math.max(...values), span = high - low || 1;
    const step = 100 / Math.max(1, points.length - 1);
    const coords = [];
    points.forEach((v, i) => { if (v !== null) coords.push((i * step).toFixed(1) + "," + (18 - ((v - low) / span) * 16).toFixed(1)); });
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", coords.join(" "));
    svg.append(line);
  }
  return svg;
}

function renderInstruments(doc) {
  const holder = document.getElementById("instruments");
  holder.replaceChildren(...doc.instruments.map((inst) => {
    const values = el("div", {class: "values"});
    for (const [name, value] of Object.entries(inst.values)) values.append(el("span", {text: name}), el("span", {text: fmt(value)}));
    const node = el("article", {class: "card instrument", "data-instrument": inst.instrument, "data-state": inst.state},
      el("h3", {}, el("span", {text: inst.instrument}), badge(inst.state)),
      el("div", {class: "muted", text: "last poll " + (inst.poll_age_seconds === null ? "never" : duration(inst.poll_age_seconds) + " ago") +
        " · last poll took " + (inst.latency_ms === null ? "–" : fmt(inst.latency_ms) + " ms")}),
      values);
    if (inst.values_not_shown) node.append(el("div", {class: "muted", text: "+" + inst.values_not_shown + " more values"}));
    if (inst.last_error) node.append(el("div", {class: "error", text: "last error: " + inst.last_error}));
    for (const [name, points] of Object.entries(trends[inst.instrument] || {})) {
      node.append(el("div", {class: "trend", title: name + ", last " + points.length + " samples"}, sparkline(points), el("span", {text: name + " (5 min)"})));
    }
    return node;
  }));
  document.getElementById("instruments-more").textContent =
    doc.instruments_not_listed ? doc.instruments_not_listed + " more instruments not listed (see /status)" : "";
}

function renderEvents(doc) {
  const list = document.getElementById("events");
  if (!doc.events.length) { list.replaceChildren(el("li", {class: "muted", text: "no events yet"})); return; }
  list.replaceChildren(...doc.events.map((event) => el("li", {class: "kind-" + event.kind},
    el("time", {text: new Date(event.time_ns / 1e6).toLocaleTimeString()}),
    el("strong", {text: event.kind.replace(/_/g, " ")}), " ",
    el("span", {text: (event.rig ? event.rig + ": " : "") + event.message}))));
}

function renderOutputs(doc) {
  const table = el("table", {}, el("tr", {}, ...["output", "state", "backlog", "oldest undelivered", "delivered"].map((h) => el("th", {text: h}))));
  for (const out of doc.outputs) {
    const state = out.failing ? "failing" : out.backlog > 1000 ? "behind" : "delivering";
    const row = el("tr", {"data-output": out.output},
      el("td", {text: out.output + (out.type ? " (" + out.type + ")" : "")}),
      el("td", {}, badge(state)),
      el("td", {text: fmt(out.backlog)}),
      el("td", {text: duration(out.oldest_age_seconds)}),
      el("td", {text: fmt(out.delivered)}));
    table.append(row);
    if (out.failing && out.last_error) table.append(el("tr", {}, el("td", {colSpan: 5, class: "error", text: out.last_error})));
  }
  document.getElementById("outputs").replaceChildren(table);
  const spool = doc.spool, holder = document.getElementById("spool");
  if (!spool) { holder.replaceChildren(); return; }
  if (spool.kind === "memory") {
    holder.replaceChildren(el("div", {text: "memory ring: " + fmt(spool.records) + " of " + fmt(spool.capacity) + " records, " + fmt(spool.dropped) + " dropped"}));
    return;
  }
  const meter = el("div", {class: "meter"});
  const fill = el("div");
  fill.style.width = ((spool.use || 0) * 100).toFixed(1) + "%";
  meter.append(fill);
  holder.replaceChildren(el("div", {text: "spool on disk: " + (spool.max_bytes ? ((spool.use || 0) * 100).toFixed(1) + " % of its size cap" : "no size cap") +
    ", " + fmt(spool.records) + " records" + (spool.max_age_seconds ? ", age cap " + duration(spool.max_age_seconds) : "")}), meter,
    el("div", {class: spool.dropped_records ? "error" : "muted", text: fmt(spool.dropped_records) + " records dropped by a cap"}));
}

function renderControl(doc) {
  const section = document.getElementById("control");
  section.hidden = !doc.control;
  if (!doc.control) return;
  let actions = section.querySelector(".actions");
  if (!actions) { actions = el("div", {class: "actions"}); section.insertBefore(actions, document.getElementById("control-result")); }
  const card = doc.rigs.find((r) => r.rig === doc.rig);
  actions.replaceChildren();
  if (!card || !card.test) return;
  for (const action of ["pause", "resume"]) {
    const button = el("button", {type: "button", text: action + " " + card.test.id});
    button.disabled = (action === "pause") !== (card.state === "running");
    button.addEventListener("click", () => act(doc.rig, action));
    actions.append(button);
  }
}

async function act(rigName, action) {
  const token = document.getElementById("token").value;
  const result = document.getElementById("control-result");
  try {
    const response = await fetch("/api/rigs/" + encodeURIComponent(rigName) + "/test/" + action,
      {method: "POST", headers: {Authorization: "Bearer " + token}, credentials: "omit", cache: "no-store"});
    const reply = await response.json();
    result.textContent = reply.ok ? reply.message : "refused: " + reply.error;
  } catch (error) { result.textContent = "failed: " + error; }
}

window.addEventListener("hashchange", () => { rig = decodeURIComponent(location.hash.slice(1)) || null; poll(true); });
poll();
pollTrends();
