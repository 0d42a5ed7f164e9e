// The fleet page: reads the receiver's read API (/api/v1, same origin) and draws what it says. No framework, no
// build step, nothing fetched from elsewhere. Read-only: it only ever sends GET.
//
// State lives in the URL fragment (#gw=...&name=...&range=...), so a support engineer can send a link to one
// sensor's plot. With the API in token mode, open the page once as .../fleet/#token=TOKEN: the token is kept in
// this tab's sessionStorage, taken out of the address bar, and sent as "Authorization: Bearer".
"use strict";

const API = "../api/v1";
const REFRESH_MS = 30000;
const SVG = "http://www.w3.org/2000/svg";
const SEVERE = 50;  // a score from here on is drawn red (silent, or an alarm with something else)

const state = { gw: "", name: "", range: "86400", from: "", to: "", gateways: [], sensors: {}, lastOk: null,
                lastPlot: null };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

// -- the fragment: state and the token ----------------------------------------------------------------------------
function readFragment() {
  const p = new URLSearchParams(location.hash.replace(/^#/, ""));
  if (p.has("token")) {
    sessionStorage.setItem("edge-gateway-token", p.get("token"));
    p.delete("token");
    history.replaceState(null, "", location.pathname + location.search + (p.toString() ? "#" + p : ""));
  }
  for (const k of ["gw", "name", "range", "from", "to"]) if (p.has(k)) state[k] = p.get(k);
}

function writeFragment() {
  const p = new URLSearchParams();
  if (state.gw) p.set("gw", state.gw);
  if (state.name) p.set("name", state.name);
  p.set("range", state.range);
  if (state.range === "custom") { p.set("from", state.from); p.set("to", state.to); }
  history.replaceState(null, "", "#" + p);
}

async function get(path, params) {
  const url = new URL(API + path, location.href);
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) {
    url.searchParams.set(k, v);
  }
  const headers = {};
  const token = sessionStorage.getItem("edge-gateway-token");
  if (token) headers.Authorization = "Bearer " + token;
  const resp = await fetch(url, { headers, cache: "no-store" });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.detail || body.error || ("HTTP " + resp.status));
  return body;
}

// -- formatting -----------------------------------------------------------------------------------------------
function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  seconds = Math.max(0, seconds);
  if (seconds < 120) return Math.round(seconds) + " s ago";
  if (seconds < 7200) return Math.round(seconds / 60) + " min ago";
  if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h ago";
  return (seconds / 86400).toFixed(1) + " days ago";
}

function when(t) {
  if (t === null || t === undefined) return "—";
  const d = new Date(t * 1000);
  return d.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit",
                                minute: "2-digit" });
}

function num(v) {
  if (v === null || v === undefined) return "—";
  return Number.isInteger(v) ? String(v) : String(Math.round(v * 100) / 100);
}

function setStatus(text, offline) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("offline", !!offline);
}

// -- attention ------------------------------------------------------------------------------------------------
function renderAttention(data) {
  const list = $("attention");
  list.replaceChildren();
  for (const item of data.attention) {
    const li = el("li", { tabindex: "0", "data-gw": item.gw, "data-sensor": item.sensor || "" });
    if (item.score >= SEVERE) li.classList.add("severe");
    li.append(el("span", { class: "score" }, "score " + item.score));
    li.append(el("div", { class: "who" }, item.sensor ? item.sensor + " · " + item.gw : "gateway " + item.gw));
    const chips = el("ul", { class: "chips" });
    for (const r of item.reasons) {
      const c = el("li", { "data-kind": r.kind });
      c.append(el("span", { class: "kind " + r.kind }, r.kind.replace("_", " ")));
      c.append(document.createTextNode(" " + r.text.replace(/^[a-z_. ]+: /, "")));
      chips.append(c);
    }
    li.append(chips);
    if (item.sensor) {
      const pick = () => pickSensor(item.gw, item.sensor);
      li.addEventListener("click", pick);
      li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
    }
    list.append(li);
  }
  $("attention-empty").hidden = data.attention.length > 0;
}

// -- gateways -------------------------------------------------------------------------------------------------
function cell(text, cls) {
  const td = el("td", cls ? { class: cls } : {}, text);
  return td;
}

function renderGateways(data) {
  const body = $("gateways").querySelector("tbody");
  body.replaceChildren();
  for (const g of data.gateways) {
    const tr = el("tr", { "data-gw": g.gw });
    tr.append(el("th", { scope: "row" }, g.gw));
    const silent = g.last_seen !== null && data.now - g.last_seen > 1800;
    tr.append(cell(age(g.last_seen === null ? null : data.now - g.last_seen), silent ? "bad" : ""));
    tr.append(cell(g.version === null ? "—" : g.version, g.version === null ? "na" : ""));
    tr.append(g.clock_synced === null ? cell("—", "na") :
      cell(g.clock_synced ? "synchronised" : "NOT synchronised", g.clock_synced ? "ok" : "bad"));
    tr.append(cell(g.queue_batches === null ? "—" : num(g.queue_batches), g.queue_batches ? "bad" : "na"));
    tr.append(cell(num(g.drops), g.drops ? "bad" : ""));
    tr.append(cell(num(g.restarts), ""));
    tr.append(cell(g.last_stop === null ? "—" : g.last_stop.replace(/\./g, " "), "wide" +
      (/^(crash|watchdog|oom|power_loss|killed)/.test(g.last_stop || "") ? " bad" : "")));
    tr.append(cell(num(g.sensors), "wide"));
    body.append(tr);
  }
}

// -- the plot's pickers ---------------------------------------------------------------------------------------
function fillSelect(select, values, current) {
  const had = select.value;
  select.replaceChildren(...values.map(([value, label]) => el("option", { value }, label)));
  const want = values.some(([v]) => v === current) ? current : (values.some(([v]) => v === had) ? had :
    (values[0] || [""])[0]);
  select.value = want;
  return want;
}

async function loadSensors(gw) {
  if (!gw) return [];
  const data = await get("/sensors", { gw });
  state.sensors[gw] = data.sensors;
  return data.sensors;
}

function names(sensors) {
  const out = [];
  for (const s of sensors) for (const q of Object.keys(s.readings)) out.push([s.sensor + "/" + q, s.sensor + " · " + q]);
  return out;
}

async function refreshPickers() {
  state.gw = fillSelect($("pick-gw"), state.gateways.map((g) => [g.gw, g.gw]), state.gw);
  const sensors = await loadSensors(state.gw);
  state.name = fillSelect($("pick-name"), names(sensors), state.name);
}

function pickSensor(gw, sensor) {
  state.gw = gw;
  chooseQuantity(gw, sensor);
  refreshPickers().then(plot).catch(showError);
  $("plot-section").scrollIntoView({ behavior: "smooth", block: "start" });
}

// -- the plot -------------------------------------------------------------------------------------------------
function localInput(t) {
  const d = new Date(t * 1000);
  d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
  return d.toISOString().slice(0, 16);
}

function rangeParams() {
  if (state.range === "custom") {
    const from = Date.parse($("pick-from").value) / 1000, to = Date.parse($("pick-to").value) / 1000;
    if (isFinite(from) && isFinite(to) && from < to) return { from, to };
    return null;
  }
  return { span: Number(state.range) };
}

async function plot() {
  writeFragment();
  if (!state.gw || !state.name) { drawPlot(null); return; }
  const r = rangeParams();
  if (!r) { $("plot-caption").textContent = "Choose a start before the end."; return; }
  const width = $("plot").clientWidth || 800;
  const params = { gw: state.gw, name: state.name, max_points: Math.max(50, Math.min(2000, Math.round(width))) };
  if (r.span) {
    params.span = r.span;  // ending at the reading's newest value: a silent sensor still shows its last day
  } else {
    params.from = r.from;
    params.to = r.to;
  }
  const data = await get("/readings", params);
  state.lastPlot = data;
  drawPlot(data);
}

function niceTicks(lo, hi, n) {
  const span = hi - lo || 1;
  const step0 = span / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.round(v / step) * step);
  return out;
}

function timeLabel(t, span) {
  const d = new Date(t * 1000);
  if (span <= 2 * 86400) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toLocaleDateString([], { month: "short", day: "numeric" });
}

function drawPlot(data) {
  const box = $("plot");
  box.replaceChildren();
  const W = box.clientWidth || 800, H = box.clientHeight || 300;
  box.setAttribute("viewBox", "0 0 " + W + " " + H);
  const m = { l: 52, r: 12, t: 12, b: 26 };
  const caption = $("plot-caption");
  box.setAttribute("data-points", data ? String(data.points.length) : "0");
  if (!data || !data.points.length) {
    box.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "nodata" },
      data ? "no readings in this range" : "no reading chosen"));
    caption.textContent = data ? state.gw + " · " + data.name + ": nothing between " + when(data.from) + " and " +
      when(data.to) : "";
    return;
  }
  const x0 = data.from, x1 = data.to > data.from ? data.to : data.from + 1;
  const ys = data.points.map((p) => p[1]);
  for (const e of data.envelope || []) ys.push(e[1], e[2]);
  for (const v of Object.values(data.thresholds || {})) ys.push(v);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.06;
  y0 -= pad; y1 += pad;
  const X = (t) => m.l + (t - x0) / (x1 - x0) * (W - m.l - m.r);
  const Y = (v) => H - m.b - (v - y0) / (y1 - y0) * (H - m.t - m.b);

  for (const v of niceTicks(y0, y1, 5)) {
    box.append(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }));
    box.append(svg("text", { class: "axis", x: m.l - 6, y: Y(v) + 4, "text-anchor": "end" }, num(v)));
  }
  const ticks = Math.max(2, Math.floor((W - m.l - m.r) / 90));
  for (let i = 0; i <= ticks; i++) {
    const t = x0 + (x1 - x0) * i / ticks;
    box.append(svg("text", { class: "axis", x: X(t), y: H - 8, "text-anchor": i === 0 ? "start" :
      (i === ticks ? "end" : "middle") }, timeLabel(t, x1 - x0)));
  }
  if (data.envelope) {
    const top = data.envelope.map((e) => X(e[0]).toFixed(1) + "," + Y(e[2]).toFixed(1));
    const bottom = data.envelope.slice().reverse().map((e) => X(e[0]).toFixed(1) + "," + Y(e[1]).toFixed(1));
    box.append(svg("polygon", { class: "envelope", points: top.concat(bottom).join(" ") }));
  }
  for (const [level, v] of Object.entries(data.thresholds || {})) {
    box.append(svg("line", { class: "thr", "data-level": level, x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }));
    box.append(svg("text", { class: "thr-label", x: W - m.r - 4, y: Y(v) - 4, "text-anchor": "end" },
      level + " " + num(v)));
  }
  for (const e of data.events) {
    const line = svg("line", { class: "ev " + (["raised", "cleared"].includes(e.state) ? e.state : "info"),
      "data-event": e.event, x1: X(e.t), x2: X(e.t), y1: m.t, y2: H - m.b });
    line.append(svg("title", {}, when(e.t) + " " + e.event + " " + e.state + ": " + e.reason));
    box.append(line);
  }
  const pts = data.points.map((p) => X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1));
  box.append(svg("polyline", { class: "series", points: pts.join(" ") }));
  if (data.points.length <= 60) {
    for (const p of data.points) box.append(svg("circle", { class: "dot", cx: X(p[0]), cy: Y(p[1]), r: 2.5 }));
  }
  caption.textContent = state.gw + " · " + data.name + (data.unit ? " (" + data.unit + ")" : "") + ": " +
    data.points.length + (data.downsampled ? " points (means of " + data.total + " readings)" : " readings") +
    ", " + when(data.from) + " – " + when(data.to) + (data.events.length ? "; " + data.events.length +
    " events marked" : "");
}

// -- the loop -------------------------------------------------------------------------------------------------
function showError(err) {
  const since = state.lastOk ? " (showing data from " + new Date(state.lastOk).toLocaleTimeString() + ")" : "";
  setStatus("offline: " + err.message + since, true);
}

async function refresh() {
  try {
    const [gws, att] = await Promise.all([get("/gateways"), get("/attention")]);
    state.gateways = gws.gateways;
    renderGateways(gws);
    renderAttention(att);
    if (!state.gw && att.attention.length && att.attention[0].sensor) {
      state.gw = att.attention[0].gw;
      await loadSensors(state.gw);
      chooseQuantity(att.attention[0].gw, att.attention[0].sensor);
    }
    await refreshPickers();
    await plot();
    state.lastOk = Date.now();
    setStatus(gws.gateways.length + " gateways, " + att.attention.length + " need attention · updated " +
      new Date().toLocaleTimeString());
  } catch (err) {
    showError(err);
  }
}

// a sensor's reading to plot first: its temperature, else its battery, else whatever it has
function chooseQuantity(gw, sensor) {
  const readings = ((state.sensors[gw] || []).find((s) => s.sensor === sensor) || { readings: {} }).readings;
  const q = ["temp", "batt", "hum"].find((p) => p in readings) || Object.keys(readings)[0];
  state.name = q ? sensor + "/" + q : "";
}

function init() {
  readFragment();
  $("pick-range").value = state.range;
  $("custom-range").hidden = state.range !== "custom";
  if (state.from) $("pick-from").value = localInput(Number(state.from));
  if (state.to) $("pick-to").value = localInput(Number(state.to));
  $("pick-gw").addEventListener("change", (e) => {
    state.gw = e.target.value; state.name = "";
    refreshPickers().then(plot).catch(showError);
  });
  $("pick-name").addEventListener("change", (e) => { state.name = e.target.value; plot().catch(showError); });
  $("pick-range").addEventListener("change", (e) => {
    state.range = e.target.value;
    const custom = state.range === "custom";
    $("custom-range").hidden = !custom;
    if (custom && state.lastPlot) {
      $("pick-from").value = localInput(state.lastPlot.from);
      $("pick-to").value = localInput(state.lastPlot.to);
    }
    plot().catch(showError);
  });
  for (const id of ["pick-from", "pick-to"]) {
    $(id).addEventListener("change", () => {
      state.from = String(Date.parse($("pick-from").value) / 1000);
      state.to = String(Date.parse($("pick-to").value) / 1000);
      plot().catch(showError);
    });
  }
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => drawPlot(state.lastPlot), 150);
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", init);
