// Live view of /stream: one canvas per device and sensor over the last
// window_s seconds, forecast band shaded, anomalies red, and the running
// mean ± std (Welford, since the page opened) with values beyond k·std amber
// (from the 10th point on: a handful of points has no meaningful std yet).
"use strict";

const state = { windowS: 60, k: 3, series: new Map(), events: 0, anomalies: 0 };
const panels = document.getElementById("panels");

function seriesFor(device, sensor) {
  const key = device + " / " + sensor;
  let s = state.series.get(key);
  if (s) return s;
  const panel = document.createElement("section");
  panel.className = "panel";
  panel.dataset.series = key;
  panel.innerHTML = "<h2><span class='name'></span><span class='stats'></span></h2><canvas></canvas>";
  panel.querySelector(".name").textContent = key;
  panels.appendChild(panel);
  s = { key, panel, canvas: panel.querySelector("canvas"), stats: panel.querySelector(".stats"),
        points: [], n: 0, mean: 0, m2: 0, anomalies: 0 };
  state.series.set(key, s);
  return s;
}

function std(s) { return s.n > 1 ? Math.sqrt(s.m2 / s.n) : 0; }

function add(result) {
  const s = seriesFor(result.device_id, result.sensor);
  const t = Date.parse(result.ts);
  const beyond = s.n >= 10 && Math.abs(result.value - s.mean) > state.k * std(s);
  s.n += 1;
  const delta = result.value - s.mean;
  s.mean += delta / s.n;
  s.m2 += delta * (result.value - s.mean);
  if (result.anomaly) { s.anomalies += 1; state.anomalies += 1; }
  s.points.push({ t, v: result.value, lo: result.yhat_lower, hi: result.yhat_upper,
                  anomaly: !!result.anomaly, beyond });
  state.events += 1;
  s.dirty = true;
}

function draw(s, now) {
  const horizon = now - state.windowS * 1000;
  s.points = s.points.filter((p) => p.t >= horizon - 5000);
  const c = s.canvas, ratio = window.devicePixelRatio || 1;
  c.width = c.clientWidth * ratio; c.height = c.clientHeight * ratio;
  const g = c.getContext("2d");
  g.scale(ratio, ratio);
  const w = c.clientWidth, h = c.clientHeight, pad = 4;
  const pts = s.points.filter((p) => p.t >= horizon);
  const vals = pts.flatMap((p) => [p.v, p.lo, p.hi]).filter((v) => v !== null && v !== undefined);
  const sd = std(s);
  vals.push(s.mean - state.k * sd, s.mean + state.k * sd);
  const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
  const x = (t) => ((t - horizon) / (state.windowS * 1000)) * w;
  const y = (v) => h - pad - ((v - lo) / span) * (h - 2 * pad);
  g.fillStyle = "rgba(245,158,11,.08)";
  g.fillRect(0, y(s.mean + state.k * sd), w, y(s.mean - state.k * sd) - y(s.mean + state.k * sd));
  const band = pts.filter((p) => p.lo !== null && p.hi !== null);
  if (band.length > 1) {
    g.beginPath();
    band.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p.hi)) : g.moveTo(x(p.t), y(p.hi))));
    band.slice().reverse().forEach((p) => g.lineTo(x(p.t), y(p.lo)));
    g.closePath(); g.fillStyle = "#bfdbfe"; g.fill();
  }
  g.strokeStyle = "#94a3b8"; g.setLineDash([4, 4]); g.beginPath();
  g.moveTo(0, y(s.mean)); g.lineTo(w, y(s.mean)); g.stroke(); g.setLineDash([]);
  g.strokeStyle = "#2563eb"; g.lineWidth = 1.5; g.beginPath();
  pts.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p.v)) : g.moveTo(x(p.t), y(p.v))));
  g.stroke();
  for (const p of pts) {
    if (!p.anomaly && !p.beyond) continue;
    g.fillStyle = p.anomaly ? "#dc2626" : "#f59e0b";
    g.beginPath(); g.arc(x(p.t), y(p.v), p.anomaly ? 4 : 3, 0, 2 * Math.PI); g.fill();
  }
  const last = pts[pts.length - 1];
  const cls = last && last.anomaly ? "anomalous" : last && last.beyond ? "beyond" : "ok";
  s.stats.innerHTML = "";
  const span2 = document.createElement("span");
  span2.className = cls;
  span2.textContent = "mean " + s.mean.toPrecision(4) + " ± " + sd.toPrecision(3) +
    " (n=" + s.n + ", anomalies " + s.anomalies + ")";
  s.stats.appendChild(span2);
  s.panel.dataset.points = String(pts.length);
  s.panel.dataset.anomalies = String(s.anomalies);
}

function render() {
  // Charts scroll with the newest point, not the browser clock, so devices
  // whose clocks are off still show.
  let newest = 0;
  for (const s of state.series.values()) {
    const p = s.points[s.points.length - 1];
    if (p && p.t > newest) newest = p.t;
  }
  const now = Math.max(newest, Date.now() - 5000);
  for (const s of state.series.values()) draw(s, Math.max(now, newest));
  document.getElementById("counts").textContent =
    state.events + " results, " + state.anomalies + " anomalies";
  document.body.dataset.events = String(state.events);
  document.body.dataset.anomalies = String(state.anomalies);
}

function connect() {
  const status = document.getElementById("status");
  const since = new Date(Date.now() - state.windowS * 1000).toISOString();
  // With API_READ_TOKEN set, open the page as /?token=...: EventSource cannot send headers.
  const token = new URLSearchParams(location.search).get("token");
  const auth = token ? "&token=" + encodeURIComponent(token) : "";
  const source = new EventSource("/stream?since=" + encodeURIComponent(since) + auth);
  source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status down"; };
  source.onmessage = (e) => add(JSON.parse(e.data));
}

fetch("/dashboard/config").then((r) => r.json()).then((cfg) => {
  state.windowS = cfg.window_s; state.k = cfg.std_k;
  document.getElementById("k").textContent = String(cfg.std_k);
  document.getElementById("window").textContent = String(cfg.window_s);
}).finally(() => { connect(); setInterval(render, 500); });
