// klagg's chart page: history from /fapi/v1/klines, then the live kline
// from the /market/ws kline stream, updated in place; a status panel from
// /api/v1/status. window.klagg exposes what the page shows, for tests.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const state = (window.klagg = { symbol: "", interval: "", candles: 0, updates: 0, last: null, error: "" });

function withToken(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function get(path) {
  const r = await fetch(withToken(path));
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error(`${path}: ${(body && body.msg) || r.status}`);
  return body;
}

function fail(msg) {
  state.error = msg;
  const el = document.getElementById("error");
  el.textContent = msg;
  el.hidden = false;
}

if (typeof LightweightCharts === "undefined") {
  fail("The chart library is not built into this klagg: run ./scripts/run (it installs it with npm), or ./scripts/web then rebuild.");
  throw new Error(state.error);
}

const chartEl = document.getElementById("chart");
const chart = LightweightCharts.createChart(chartEl, {
  autoSize: true,
  layout: { background: { color: "#131722" }, textColor: "#d1d4dc" },
  grid: { vertLines: { color: "#1e222d" }, horzLines: { color: "#1e222d" } },
  timeScale: { timeVisible: true, secondsVisible: false },
});
const candles = chart.addSeries(LightweightCharts.CandlestickSeries, {
  upColor: "#26a69a", downColor: "#ef5350", borderVisible: false, wickUpColor: "#26a69a", wickDownColor: "#ef5350",
});
const volume = chart.addSeries(LightweightCharts.HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "" });
volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
candles.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });

function bar(openTime, o, h, l, c, v) {
  const time = openTime / 1000;
  const up = +c >= +o;
  return [
    { time, open: +o, high: +h, low: +l, close: +c },
    { time, value: +v, color: up ? "rgba(38,166,154,.5)" : "rgba(239,83,80,.5)" },
  ];
}

let ws = null;
let generation = 0;

async function show(symbol, interval) {
  const gen = ++generation;
  state.symbol = symbol;
  state.interval = interval;
  state.candles = 0;
  state.updates = 0;
  state.last = null;
  history.replaceState(null, "", `?symbol=${symbol}&interval=${interval}` + (token ? `&token=${encodeURIComponent(token)}` : ""));
  if (ws) ws.close();
  const rows = await get(`/fapi/v1/klines?symbol=${symbol}&interval=${interval}&limit=1000`);
  if (gen !== generation) return;
  const cs = [], vs = [];
  for (const k of rows) {
    const [c, v] = bar(k[0], k[1], k[2], k[3], k[4], k[5]);
    cs.push(c);
    vs.push(v);
  }
  candles.setData(cs);
  volume.setData(vs);
  state.candles = cs.length;
  state.last = cs.length ? { ...cs[cs.length - 1], volume: vs[vs.length - 1].value } : null;
  chart.timeScale().scrollToRealTime();

  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const sock = new WebSocket(withToken(`${proto}//${location.host}/market/ws/${symbol.toLowerCase()}@kline_${interval}`));
  ws = sock;
  const badge = document.getElementById("live");
  sock.onopen = () => { badge.textContent = "live"; badge.className = "badge up"; };
  sock.onclose = (e) => {
    if (ws !== sock) return;
    badge.textContent = "disconnected" + (e.reason ? ": " + e.reason : "");
    badge.className = "badge down";
    setTimeout(() => { if (ws === sock) show(symbol, interval); }, 3000);
  };
  sock.onmessage = (m) => {
    const k = JSON.parse(m.data).k;
    if (!k || gen !== generation) return;
    const [c, v] = bar(k.t, k.o, k.h, k.l, k.c, k.v);
    if (state.last && c.time < state.last.time) return;
    if (!state.last || c.time > state.last.time) state.candles++;
    candles.update(c);
    volume.update(v);
    state.last = { ...c, volume: v.value };
    state.updates++;
  };
}

function fill(select, values, chosen) {
  select.replaceChildren(...values.map((v) => new Option(v, v, false, v === chosen)));
}

async function refreshStatus() {
  try {
    const s = await get("/api/v1/status");
    const set = (id, v) => (document.getElementById(id).textContent = v);
    set("st-symbols", s.symbols);
    set("st-rate", Math.round(s.trades_per_second).toLocaleString());
    set("st-lag", `${s.lag_ms} ms`);
    set("st-conns", `${s.connected}/${s.connections}`);
    set("st-written", s.klines_written.toLocaleString());
    set("st-clients", s.stream_clients);
    set("st-ready", s.ready ? "yes" : "catching up");
    document.getElementById("st-connlist").replaceChildren(...(s.connection_states || []).map((c) => {
      const li = document.createElement("li");
      li.textContent = `#${c.id} ${c.connected ? "up" : "down"} · ${c.streams} streams · ${c.reconnects} reconnects`;
      return li;
    }));
    state.status = s;
  } catch (e) {
    fail(e.message);
  }
}

async function main() {
  const [info, status] = await Promise.all([get("/fapi/v1/exchangeInfo"), get("/api/v1/status")]);
  const symbols = info.symbols.map((s) => s.symbol);
  const intervals = status.interval_names;
  if (symbols.length === 0) {
    fail("klagg serves no symbols yet; it is still catching up.");
    return;
  }
  const symbol = symbols.includes(params.get("symbol")) ? params.get("symbol") : symbols.includes("BTCUSDT") ? "BTCUSDT" : symbols[0];
  const interval = intervals.includes(params.get("interval")) ? params.get("interval") : intervals[0];
  const symSel = document.getElementById("symbol");
  const ivSel = document.getElementById("interval");
  fill(symSel, symbols, symbol);
  fill(ivSel, intervals, interval);
  symSel.onchange = ivSel.onchange = () => show(symSel.value, ivSel.value).catch((e) => fail(e.message));
  await show(symbol, interval);
  refreshStatus();
  setInterval(refreshStatus, 2000);
}

main().catch((e) => fail(e.message));
