// tenantserve status page: polls ../v1/status and draws it. No framework, no build step.
"use strict";

(() => {
  const POLL_MS = 2000;
  const TIMEOUT_MS = 5000;
  const STATUS_URL = "../v1/status?models=500";
  const KEY_STORE = "tenantserve-api-key";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART_H = 150;
  const PAD = { left: 52, right: 10, top: 8, bottom: 18 };

  const view = { sort: "last_used_s", asc: false, lastSeq: null, data: null };
  const $ = (id) => document.getElementById(id);

  // -- building blocks -------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(id, text) {
    const node = $(id);
    if (node.textContent !== text) node.textContent = text;
  }

  // -- formatting ------------------------------------------------------------------------

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    const digits = unit === 0 || value >= 100 ? 0 : 1;
    return `${value.toFixed(digits)} ${units[unit]}`;
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
    if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`;
    return `${s.toFixed(2)} s`;
  }

  function fmtAxisSeconds(s) {
    if (s === 0) return "0";
    if (s < 0.001) return `${+(s * 1e6).toPrecision(2)} µs`;
    if (s < 1) return `${+(s * 1000).toPrecision(3)} ms`;
    return `${+s.toPrecision(3)} s`;
  }

  function fmtInt(n) {
    return Number(n).toLocaleString("en-US");
  }

  function fmtPct(ratio) {
    return ratio === null || ratio === undefined ? "–" : `${(ratio * 100).toFixed(1)}%`;
  }

  function fmtAgo(nowS, thenS) {
    const s = Math.max(0, nowS - thenS);
    if (s < 1) return "now";
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function fmtClock(epochS) {
    return new Date(epochS * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }

  function fmtSpan(seconds) {
    return seconds >= 120 ? `${Math.round(seconds / 60)} min` : `${Math.round(seconds)} s`;
  }

  function fmtRange(windowS) {
    // "5–10 min": a hot list covers its current window and the one before.
    return windowS >= 60 ? `${Math.round(windowS / 60)}–${Math.round((2 * windowS) / 60)} min` : `${Math.round(windowS)}–${Math.round(2 * windowS)} s`;
  }

  function niceCeil(x) {
    if (!(x > 0)) return 1;
    const base = 10 ** Math.floor(Math.log10(x));
    for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (x <= step * base) return step * base;
    return 10 * base;
  }

  // -- polling ---------------------------------------------------------------------------

  function setConn(state, text) {
    $("conn").dataset.state = state;
    setText("conn-text", text);
  }

  async function poll() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const headers = {};
      const key = sessionStorage.getItem(KEY_STORE);
      if (key) headers.Authorization = `Bearer ${key}`;
      const response = await fetch(STATUS_URL, { headers, cache: "no-store", signal: controller.signal });
      if (response.status === 401 || response.status === 403) {
        $("auth").hidden = false;
        setConn("down", response.status === 401 ? "API key needed" : "this key may not read status");
      } else if (!response.ok) {
        setConn("down", `HTTP ${response.status} · retrying`);
      } else {
        const data = await response.json();
        $("auth").hidden = true;
        view.data = data;
        render(data);
        setConn("live", `live · ${fmtClock(data.time_s)}`);
      }
    } catch (err) {
      setConn("down", "server unreachable · retrying");
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  // -- rendering -------------------------------------------------------------------------

  function render(data) {
    const up = fmtSpan(Math.max(0, data.time_s - data.started_s));
    setText("version", `v${data.version} · up ${up}${data.ready ? "" : " · not ready"}`);
    renderKpis(data);
    renderMemory(data.memory);
    renderCharts(data);
    renderModels(data);
    renderEvents(data);
    renderHot("hot-models", data.hot.models);
    renderHot("hot-tenants", data.hot.tenants);
    const span = `last ${fmtRange(data.hot.window_s)}`;
    setText("hot-note", span);
    setText("hot-tenants-note", span);
  }

  function lastMinuteRate(data) {
    const points = data.series.points;
    const bucket = data.series.bucket_s;
    const n = Math.min(points.length, Math.max(1, Math.round(60 / bucket)));
    const recent = points.slice(points.length - n);
    const up = Math.max(1, data.time_s - data.started_s);
    const covered = Math.min(up, (n - 1) * bucket + Math.max(0.5, data.time_s - recent[recent.length - 1].start_s));
    const requests = recent.reduce((sum, p) => sum + p.requests, 0);
    return requests / covered;
  }

  function renderKpis(data) {
    const w = data.window;
    const t = data.totals;
    const span = fmtSpan(w.seconds);
    const rate = lastMinuteRate(data);
    setText("kpi-rps", rate >= 10 ? rate.toFixed(0) : rate.toFixed(2));
    setText("kpi-rps-sub", `${fmtInt(t.requests)} since start`);
    setText("kpi-hit", fmtPct(w.hit_ratio));
    setText("kpi-hit-sub", `${fmtInt(w.hits)} hits · ${fmtInt(w.misses)} cold · ${span}`);
    setText("kpi-p95", fmtSeconds(w.p95_s));
    setText("kpi-p95-sub", `p50 ${fmtSeconds(w.p50_s)} · p99 ${fmtSeconds(w.p99_s)}`);
    setText("kpi-models", fmtInt(data.models_total));
    const pinned = data.models.filter((m) => m.pinned).length;
    setText("kpi-models-sub", `${pinned} pinned`);
    setText("kpi-churn", `${fmtInt(t.loads)} · ${fmtInt(t.evictions)}`);
    setText("kpi-churn-sub", `${fmtInt(t.load_failures)} failed loads · since start`);
    setText("kpi-rejected", `${fmtInt(w.rejected)} · ${fmtInt(w.errors)}`);
    setText("kpi-rejected-sub", `last ${span}`);
  }

  function renderMemory(mem) {
    const budget = Math.max(1, mem.budget_bytes);
    const pinned = Math.min(mem.pinned_bytes, mem.used_bytes);
    const shared = Math.min(mem.shared_bytes, mem.used_bytes - pinned);
    const unpinned = Math.max(0, mem.used_bytes - pinned - shared);
    const pct = (n) => `${Math.min(100, (100 * n) / budget).toFixed(2)}%`;
    $("seg-pinned").style.width = pct(pinned);
    $("seg-used").style.width = pct(unpinned);
    $("seg-shared").style.width = pct(shared);
    const used = `${fmtBytes(mem.used_bytes)} of ${fmtBytes(mem.budget_bytes)} used`;
    const share = `${((100 * mem.used_bytes) / budget).toFixed(0)}%`;
    setText("memory-text", `${used} (${share})`);
    $("budget-bar").setAttribute("aria-label", `memory budget: ${used}`);
    setText("leg-pinned", fmtBytes(pinned));
    setText("leg-used", fmtBytes(unpinned));
    setText("leg-shared", fmtBytes(shared));
    setText("leg-free", fmtBytes(mem.free_bytes));
  }

  // -- charts: hand-drawn SVG ------------------------------------------------------------

  function frame(node, yMax, fmtY, spanLabel) {
    const width = Math.max(200, node.clientWidth || 400);
    node.setAttribute("viewBox", `0 0 ${width} ${CHART_H}`);
    node.replaceChildren();
    const plot = { x0: PAD.left, x1: width - PAD.right, y0: CHART_H - PAD.bottom, y1: PAD.top };
    for (const frac of [0, 0.5, 1]) {
      const y = plot.y0 - frac * (plot.y0 - plot.y1);
      node.append(svg("line", { x1: plot.x0, x2: plot.x1, y1: y, y2: y, class: "gridline" }));
      node.append(svg("text", { x: plot.x0 - 6, y: y + 3, "text-anchor": "end", class: "axis" }, fmtY(frac * yMax)));
    }
    node.append(svg("text", { x: plot.x0, y: CHART_H - 4, class: "axis" }, `−${spanLabel}`));
    node.append(svg("text", { x: plot.x1, y: CHART_H - 4, "text-anchor": "end", class: "axis" }, "now"));
    return plot;
  }

  function xOf(plot, i, n) {
    return plot.x0 + ((plot.x1 - plot.x0) * i) / n;
  }

  function yOf(plot, value, yMax) {
    return plot.y0 - ((plot.y0 - plot.y1) * value) / yMax;
  }

  function linePath(plot, values, yMax) {
    const n = values.length;
    let path = "";
    let pen = false;
    values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      const x = xOf(plot, i + 0.5, n).toFixed(1);
      const y = yOf(plot, Math.min(v, yMax), yMax).toFixed(1);
      path += `${pen ? "L" : "M"}${x},${y}`;
      pen = true;
    });
    return path;
  }

  // A line through the values, and a dot for each value with no neighbour to join.
  function drawLine(node, plot, values, yMax, name) {
    const path = linePath(plot, values, yMax);
    if (!path) return false;
    node.append(svg("path", { d: path, class: `line line-${name}` }));
    values.forEach((v, i) => {
      const alone = (j) => j < 0 || j >= values.length || values[j] === null || values[j] === undefined;
      if (v === null || v === undefined || !alone(i - 1) || !alone(i + 1)) return;
      const cx = xOf(plot, i + 0.5, values.length).toFixed(1);
      const cy = yOf(plot, Math.min(v, yMax), yMax).toFixed(1);
      node.append(svg("circle", { cx, cy, r: 2.5, class: `dot dot-${name}` }));
    });
    return true;
  }

  function noData(node, plot) {
    node.append(svg("text", { x: (plot.x0 + plot.x1) / 2, y: (plot.y0 + plot.y1) / 2, "text-anchor": "middle", class: "nodata" }, "no requests yet"));
  }

  // The whole window once the server has been up that long; until then, since it started
  // (at least two minutes), so a young server's traffic is not squeezed into one edge.
  function visiblePoints(data) {
    const all = data.series.points;
    const bucket = data.series.bucket_s;
    const upBuckets = Math.ceil(Math.max(0, data.time_s - data.started_s) / bucket) + 1;
    const want = Math.max(Math.ceil(120 / bucket), upBuckets);
    return all.slice(Math.max(0, all.length - want));
  }

  function renderCharts(data) {
    const points = visiblePoints(data);
    const n = points.length;
    const span = fmtSpan(n * data.series.bucket_s);
    setText("requests-note", `per ${data.series.bucket_s} s · last ${span}`);
    setText("hit-note", `last ${span}`);
    setText("latency-note", `inside the server · last ${span}`);
    const any = points.some((p) => p.requests > 0);

    const reqNode = $("chart-requests");
    const reqMax = niceCeil(Math.max(...points.map((p) => p.requests)));
    let plot = frame(reqNode, reqMax, (v) => (Number.isInteger(v) ? fmtInt(v) : v.toFixed(1)), span);
    const barW = Math.max(1, (plot.x1 - plot.x0) / n - 1);
    points.forEach((p, i) => {
      if (!p.requests) return;
      const x = xOf(plot, i, n);
      let base = 0;
      const group = svg("g");
      group.append(svg("title", {}, `${fmtClock(p.start_s)} · ${p.requests} requests: ${p.hits} hits, ${p.misses} cold, ${p.rejected} rejected, ${p.errors} errors`));
      // Errors are hits or misses that failed; shown apart, taken from the misses first
      // (failed loads), so the stack still adds up to the requests.
      const missErrors = Math.min(p.errors, p.misses);
      const stack = [
        [Math.max(0, p.hits - (p.errors - missErrors)), "bar-hit"],
        [p.misses - missErrors, "bar-miss"],
        [p.errors, "bar-error"],
        [p.rejected, "bar-rejected"],
      ];
      for (const [count, cls] of stack) {
        if (!count) continue;
        const top = yOf(plot, base + count, reqMax);
        group.append(svg("rect", { x: x.toFixed(1), y: top.toFixed(1), width: barW.toFixed(1), height: (yOf(plot, base, reqMax) - top).toFixed(1), class: cls }));
        base += count;
      }
      reqNode.append(group);
    });
    if (!any) noData(reqNode, plot);

    const hitNode = $("chart-hit");
    plot = frame(hitNode, 1, (v) => `${Math.round(v * 100)}%`, span);
    const ratios = points.map((p) => (p.hits + p.misses ? p.hits / (p.hits + p.misses) : null));
    if (ratios.some((r) => r !== null)) {
      hitNode.append(svg("path", { d: areaPath(plot, ratios), class: "area-hit" }));
      drawLine(hitNode, plot, ratios, 1, "hit");
    } else noData(hitNode, plot);

    const latNode = $("chart-latency");
    const latMax = niceCeil(Math.max(0, ...points.map((p) => p.p95_s || 0)));
    plot = frame(latNode, latMax, fmtAxisSeconds, span);
    const drewP95 = drawLine(latNode, plot, points.map((p) => p.p95_s), latMax, "p95");
    drawLine(latNode, plot, points.map((p) => p.p50_s), latMax, "p50");
    if (!drewP95) noData(latNode, plot);
  }

  function areaPath(plot, values) {
    // One closed shape per run of values, down to the axis.
    let path = "";
    let run = [];
    const flush = () => {
      if (!run.length) return;
      const first = run[0];
      const last = run[run.length - 1];
      path += `M${first[0]},${plot.y0}` + run.map(([x, y]) => `L${x},${y}`).join("") + `L${last[0]},${plot.y0}Z`;
      run = [];
    };
    values.forEach((v, i) => {
      if (v === null) return flush();
      run.push([xOf(plot, i + 0.5, values.length).toFixed(1), yOf(plot, v, 1).toFixed(1)]);
    });
    flush();
    return path;
  }

  // -- tables ----------------------------------------------------------------------------

  function renderModels(data) {
    const key = view.sort;
    const dir = view.asc ? 1 : -1;
    const models = [...data.models].sort((a, b) => {
      const va = a[key];
      const vb = b[key];
      if (va === vb) return a.id < b.id ? -1 : 1;
      return (va < vb ? -1 : 1) * dir;
    });
    const rows = models.map((m) => {
      const name = el("td", { class: "model", title: m.id, text: m.id });
      if (m.pinned) name.append(el("span", { class: "badge badge-pinned", text: "pinned" }));
      if (m.in_flight) name.append(el("span", { class: "badge badge-busy", text: "busy" }));
      return el(
        "tr",
        { "data-model": m.id },
        name,
        el("td", { class: "num", text: fmtBytes(m.bytes) }),
        el("td", { class: "num", text: fmtInt(m.hits) }),
        el("td", { class: "num", text: fmtInt(m.in_flight) }),
        el("td", { class: "num", title: fmtClock(m.last_used_s), text: fmtAgo(data.time_s, m.last_used_s) }),
        el("td", { class: "num", text: fmtSeconds(m.load_seconds) }),
      );
    });
    $("models-table").tBodies[0].replaceChildren(...rows);
    $("models-empty").hidden = rows.length > 0;
    const shown = data.models.length < data.models_total ? ` (${data.models.length} most recent shown)` : "";
    setText("models-note", `${fmtInt(data.models_total)} resident${shown}`);
    for (const th of document.querySelectorAll("#models-table th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === key);
      th.classList.toggle("asc", th.dataset.sort === key && view.asc);
    }
  }

  function describe(event) {
    switch (event.kind) {
      case "load":
        return `${fmtBytes(event.bytes)} in ${fmtSeconds(event.seconds)}`;
      case "evict":
        return `freed ${fmtBytes(event.bytes)}`;
      case "unload":
        return `released ${fmtBytes(event.bytes)}`;
      case "load_failed":
        return event.detail;
      case "rejected":
        return `${event.detail}${event.count > 1 ? ` ×${event.count}` : ""}`;
      default:
        return event.detail;
    }
  }

  function renderEvents(data) {
    const fresh = view.lastSeq;
    const items = data.events.map((e) => {
      const li = el(
        "li",
        { "data-kind": e.kind },
        el("span", { class: "time", text: fmtClock(e.time_s) }),
        el("span", { class: `kind kind-${e.kind}`, text: e.kind.replace("_", " ") }),
        el(
          "span",
          { class: "what", title: `${e.model}: ${describe(e)}` },
          el("span", { class: "model", text: e.model }),
          el("span", { class: "detail", text: describe(e) }),
        ),
      );
      if (fresh !== null && e.seq > fresh) li.classList.add("fresh");
      return li;
    });
    $("events").replaceChildren(...items);
    $("events-empty").hidden = items.length > 0;
    if (data.events.length) view.lastSeq = Math.max(view.lastSeq || 0, data.events[0].seq);
    else if (view.lastSeq === null) view.lastSeq = 0;
  }

  function renderHot(id, entries) {
    const top = Math.max(1, ...entries.map((e) => e.requests));
    const rows = entries.map((e) => {
      const meter = el("div", { class: "meter" }, el("div"));
      meter.firstChild.style.width = `${((100 * e.requests) / top).toFixed(1)}%`;
      const approx = e.error_bound > 0 ? "≤ " : "";
      return el(
        "tr",
        { "data-key": e.id },
        el("td", { class: "model", title: e.id, text: e.id }),
        el("td", { class: "num", text: approx + fmtInt(e.requests) }),
        el("td", { class: "num", text: fmtInt(e.misses) }),
        el("td", { class: "num", text: fmtInt(e.rejected) }),
        el("td", { class: "bar-col" }, meter),
      );
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "5", class: "empty", text: "No traffic yet." })));
    $(id).tBodies[0].replaceChildren(...rows);
  }

  // -- wiring ----------------------------------------------------------------------------

  function start() {
    for (const th of document.querySelectorAll("#models-table th[data-sort]")) {
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        view.asc = view.sort === key ? !view.asc : key === "id";
        view.sort = key;
        if (view.data) renderModels(view.data);
      });
    }
    $("auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("auth-key").value.trim();
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => view.data && renderCharts(view.data), 150);
    });
    poll();
  }

  start();
})();
