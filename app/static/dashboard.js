// DiffuserLite Lab dashboard: live fragments, the new-run form and the run page's charts.
// Markup comes from the server's templates; this file only fetches, re-fetches on
// server-sent events, and feeds Plotly. No token is ever handled here: requests ride on
// the session cookie and echo the readable `csrf` cookie as X-CSRF-Token.
"use strict";

const Dashboard = (() => {
  const banner = () => document.getElementById("api-error");

  // The path prefix the server is served under (DLITE_ROOT_PATH, "" at the root), from the
  // page. URLs in the markup carry it already; every URL built here goes through url().
  const ROOT = document.documentElement.dataset.root || "";
  const url = (path) => ROOT + path;

  function showError(message) {
    const el = banner();
    el.textContent = message;
    el.hidden = !message;
  }

  function csrf() {
    const m = document.cookie.match(/(?:^|;\s*)csrf=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  // fetch() for the JSON API (`href` from the markup or from url()); a failure is thrown as an
  // Error with the server's message and `detail` (FastAPI's list for 422s) so callers can show
  // it by the field.
  async function api(method, href, body) {
    const init = {method, credentials: "same-origin", headers: {"X-CSRF-Token": csrf()}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(href, init);
    } catch (e) {
      throw new Error(`Cannot reach the server (${e.message}).`);
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = data && data.detail;
      const text = typeof detail === "string" ? detail : `request failed (HTTP ${response.status})`;
      const error = new Error(text);
      error.status = response.status;
      error.detail = detail;
      throw error;
    }
    return data;
  }

  // Re-render `el` from its data-refresh URL whenever its data-stream says something
  // changed; bursts of messages are coalesced into one fetch.
  function liveFragment(el, onMessage) {
    let timer = null;
    const refresh = () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        try {
          const r = await fetch(el.dataset.refresh, {credentials: "same-origin"});
          if (r.redirected && new URL(r.url).pathname === url("/login")) {
            window.location.reload();  // the session expired: let the server send us to the login page
            return;
          }
          if (!r.ok) throw new Error(`HTTP ${r.status}`);
          el.innerHTML = await r.text();
        } catch (e) {
          showError(`Could not refresh the page data (${e.message}).`);
        }
      }, 250);
    };
    const source = new EventSource(el.dataset.stream);
    source.onopen = () => { if (banner().dataset.live) { showError(""); delete banner().dataset.live; } };
    source.onerror = () => {
      banner().dataset.live = "1";
      showError("Live updates interrupted; reconnecting…");
    };
    source.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (!onMessage || onMessage(message) !== false) refresh();
    };
    return refresh;
  }

  // A form's text as the config schema's type (int, float, str, int_list: "5,5,9"); what is
  // not a number stays text, so the server's 422 names it.
  function typedValue(text, type) {
    const raw = text.trim();
    if (raw === "") return null;
    const number = (s) => (s !== "" && Number.isFinite(Number(s)) ? Number(s) : s);
    if (type === "int_list") return raw.replace(/^\[|\]$/g, "").split(",").map((s) => number(s.trim()));
    if (type === "int" || type === "float") return number(raw);
    return raw;
  }

  const readValue = (input) => typedValue(input.value, input.dataset.type);

  // Sends only the fields changed from their defaults; the server resolves the rest with
  // dlite's config and names a bad field in its 422, shown next to that field.
  function newRunForm(form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      form.querySelectorAll(".field-error").forEach((el) => { el.textContent = ""; });
      form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
      const general = document.getElementById("form-error");
      general.hidden = true;
      const config = {};
      form.querySelectorAll("input[data-type]").forEach((input) => {
        if (input.value.trim() !== input.dataset.default) config[input.name] = readValue(input);
      });
      const body = {task: form.task.value, name: form.name.value.trim() || null, config,
                    is_demo: form.dataset.demo === "true"};
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const run = await api("POST", url("/api/runs"), body);
        window.location.href = url(`/runs/${run.id}`);
      } catch (e) {
        button.disabled = false;
        const problems = Array.isArray(e.detail) ? e.detail : [];
        const unplaced = problems.length ? [] : [e.message];
        for (const p of problems) {
          const field = p.loc[p.loc.length - 1];
          const slot = document.getElementById(`err-${field}`);
          if (slot) {
            slot.textContent = p.msg;
            const input = document.getElementById(`f-${field}`);
            if (input) input.setAttribute("aria-invalid", "true");
          } else {
            unplaced.push(`${p.loc.join(".")}: ${p.msg}`);
          }
        }
        if (unplaced.length) {
          general.textContent = unplaced.join("; ");
          general.hidden = false;
        }
        const first = form.querySelector("[aria-invalid]");
        if (first) first.focus();
      }
    });
  }

  // ---- run page charts ---------------------------------------------------------------

  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
  const SPARSE = 40;  // a series with fewer points is drawn with markers, so one point shows
  const NONFINITE = {nan: "NaN", inf: "inf", "-inf": "-inf"};
  // Plotly's own config for every chart: no logo link and no "Share chart" button (it uploads
  // the run's data to Plotly's cloud); double-click returns to the shared range.
  const PLOT_CONFIG = {responsive: true, displaylogo: false, showSendToCloud: false, showEditInChartStudio: false,
                       doubleClick: "autosize",
                       modeBarButtonsToRemove: ["select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d"]};

  // TensorBoard's smoothing: an exponential moving average started at 0 and divided by
  // (1 - weight^n), so the start-up bias toward 0 is removed and early points are not flattened.
  function smoothed(values, weight) {
    const out = new Array(values.length);
    let last = 0;
    let n = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (!Number.isFinite(v)) { out[i] = v; continue; }
      last = last * weight + (1 - weight) * v;
      n += 1;
      out[i] = last / (1 - Math.pow(weight, n));
    }
    return out;
  }

  function runCharts(paper) {
    const slider = document.getElementById("smoothing");
    const state = {smoothing: Number(slider.value), x: "step", logY: true, xRange: null};
    const series = {};  // key -> {steps, values, walls, bad: the non-finite points {steps, values, walls}}
    const charts = [...document.querySelectorAll(".plot")].map((div) => ({
      div, keys: div.dataset.keys.split(","), logY: div.dataset.logY === "true",
      smooth: div.dataset.smooth === "true", isScore: div.id === "chart-score",
    }));
    const status = document.getElementById("charts-status");

    // Always new arrays: Plotly keeps the ones it is given, and `series` keeps growing.
    const xOf = (s) => (state.x === "step" ? s.steps.slice() : s.walls.map((w) => new Date(w * 1000)));

    // One x range for every chart of the run: the user's zoom, else all data with a margin.
    function sharedRange() {
      if (state.xRange) return state.xRange;
      const scale = state.x === "step" ? 1 : 1000;
      let lo = Infinity;
      let hi = -Infinity;
      for (const s of Object.values(series)) {
        for (const xs of state.x === "step" ? [s.steps, s.bad.steps] : [s.walls, s.bad.walls]) {
          if (xs.length) { lo = Math.min(lo, xs[0]); hi = Math.max(hi, xs[xs.length - 1]); }
        }
      }
      if (lo > hi) return null;
      const pad = hi > lo ? (hi - lo) * 0.02 : (state.x === "step" ? 1 : 60);
      return [(lo - pad) * scale, (hi + pad) * scale];
    }

    function traces(chart) {
      const out = [];
      chart.keys.forEach((key, i) => {
        const s = series[key];
        const color = COLORS[i % COLORS.length];
        const mode = s.steps.length < SPARSE ? "lines+markers" : "lines";
        const smooth = chart.smooth && state.smoothing > 0;
        if (smooth) {  // the raw curve, faded, under the smoothed one
          out.push({name: `${key} (raw)`, type: "scatter", mode, x: xOf(s), y: s.values.slice(), legendgroup: key,
                    showlegend: false, opacity: 0.25, line: {color, width: 1}, marker: {color, size: 4}});
        }
        out.push({name: key, type: "scatter", mode, x: xOf(s), legendgroup: key,
                  y: smooth ? smoothed(s.values, state.smoothing) : s.values.slice(),
                  line: {color, width: 1.8}, marker: {color, size: 6}});
      });
      // evaluations (quick and final, with their spread) and a published reference curve, from lab.js
      if (chart.isScore && state.x === "step") out.push(...scoreExtras.map((t) => ({...t})));
      const bad = nonfiniteTrace(chart);
      if (bad) out.push(bad);
      return out;
    }

    // Where a series was NaN or infinite (no y to draw): a red x at the top of the plot area,
    // on an axis of its own (0 to 1) so it stays there on a log scale and under any y zoom;
    // the hover names the step and the values.
    function nonfiniteTrace(chart) {
      const at = new Map();  // step -> {wall, what: ["loss0 = NaN", ...]}
      for (const key of chart.keys) {
        const bad = series[key].bad;
        bad.steps.forEach((step, i) => {
          if (!at.has(step)) at.set(step, {wall: bad.walls[i], what: []});
          at.get(step).what.push(`${key} = ${NONFINITE[bad.values[i]] || bad.values[i]}`);
        });
      }
      if (!at.size) return null;
      const steps = [...at.keys()].sort((a, b) => a - b);
      return {name: "non-finite", type: "scatter", mode: "markers", yaxis: "y2", cliponaxis: false,
              x: steps.map((s) => (state.x === "step" ? s : new Date(at.get(s).wall * 1000))),
              y: steps.map(() => 1), hovertemplate: "%{text}<extra></extra>",
              text: steps.map((s) => `step ${s.toLocaleString("en-US")}: ${at.get(s).what.join(", ")}`),
              marker: {symbol: "x", color: "#dc2626", size: 10, line: {width: 2, color: "#dc2626"}}};
    }

    function draw(chart) {
      const empty = chart.keys.every((k) => !series[k].steps.length && !series[k].bad.steps.length)
        && !(chart.isScore && scoreExtras.length);
      const logY = chart.logY && state.logY;
      const range = sharedRange();
      const showPaper = chart.isScore && paper !== null && !empty;
      const extra = chart.isScore ? scoreExtras.length : 0;
      const bad = chart.keys.some((k) => series[k].bad.steps.length);
      const legend = chart.keys.length > 1 || extra > 0 || bad;
      const layout = {
        autosize: true, height: empty ? 120 : 280 + (legend ? 20 * extra : 0),
        margin: {l: 60, r: 12, t: 30, b: legend ? 72 : 44},
        showlegend: legend, legend: {orientation: "h", x: 0, y: -0.28},
        uirevision: `${state.x}-${state.logY}`,
        xaxis: {visible: !empty, title: {text: state.x === "step" ? "step" : "wall time", standoff: 4},
                type: state.x === "step" ? "linear" : "date", autorange: !range, range: range || undefined},
        // full numbers on log axes (0.02, 0.05, 0.1): without a format Plotly labels the
        // ticks between powers of ten with their first digit only ("2", "5")
        yaxis: {visible: !empty, type: logY ? "log" : "linear", tickformat: logY ? "~g" : "", automargin: true},
        ...(bad ? {yaxis2: {overlaying: "y", range: [0, 1], fixedrange: true, visible: false}} : {}),
        annotations: empty ? [{text: "no data yet", showarrow: false, xref: "paper", yref: "paper",
                               x: 0.5, y: 0.5, font: {size: 16, color: "#4b5563"}}] : [],
        shapes: showPaper ? [{type: "line", xref: "paper", x0: 0, x1: 1, y0: paper, y1: paper,
                              line: {dash: "dash", width: 1}}] : [],
      };
      if (showPaper) {
        layout.annotations.push({text: `paper ${paper}`, showarrow: false, xref: "paper", x: 1,
                                 xanchor: "right", y: paper, yanchor: "bottom"});
      }
      chart.div.dataset.empty = empty ? "true" : "false";
      return Plotly.react(chart.div, empty ? [] : traces(chart), layout, PLOT_CONFIG);
    }

    const redraw = () => charts.forEach(draw);
    let scoreExtras = [];
    const setScoreExtras = (extra) => { scoreExtras = extra; redraw(); };

    // New points only (step beyond the newest drawn). Every chart is redrawn, since the
    // shared x range may have grown; a zoom the user chose is kept (state.xRange).
    function append(points) {
      let fresh = false;
      for (const p of points) {
        const s = series[p.key];
        if (!s) continue;
        const into = p.nonfinite ? s.bad : s;
        const lastStep = into.steps.length ? into.steps[into.steps.length - 1] : -1;
        if (p.step <= lastStep) continue;
        into.steps.push(p.step); into.values.push(p.nonfinite || p.value); into.walls.push(p.wall_time);
        fresh = true;
      }
      if (fresh) redraw();
    }

    // A zoom or pan on one chart moves all of them; a double-click goes back to all data.
    function followZoom(event) {
      if (event["xaxis.autorange"]) {
        state.xRange = null;
      } else if (event["xaxis.range[0]"] !== undefined) {
        state.xRange = [event["xaxis.range[0]"], event["xaxis.range[1]"]];
      } else if (Array.isArray(event["xaxis.range"])) {
        state.xRange = event["xaxis.range"].slice();
      } else {
        return;
      }
      redraw();
    }

    async function load(runId) {
      const none = () => ({steps: [], values: [], walls: []});
      for (const chart of charts) for (const key of chart.keys) series[key] = {...none(), bad: none()};
      try {
        const data = await api("GET", url(`/api/runs/${runId}/charts?max_points=1000`));
        for (const [key, s] of Object.entries(data.series)) {
          const bad = s.nonfinite;
          if (series[key]) {
            series[key] = {steps: s.steps, values: s.values, walls: s.wall_times,
                           bad: {steps: bad.steps, values: bad.values, walls: bad.wall_times}};
          }
        }
        status.textContent = "";
      } catch (e) {
        status.textContent = `Could not load the charts: ${e.message}`;
        status.classList.add("error");
      }
      await Promise.all(charts.map(draw));
      charts.forEach((chart) => chart.div.on("plotly_relayout", followZoom));
    }

    document.getElementById("log-y").addEventListener("change", (e) => { state.logY = e.target.checked; redraw(); });
    document.getElementById("x-axis").addEventListener("change", (e) => {
      state.x = e.target.value;
      state.xRange = null;
      redraw();
    });
    slider.addEventListener("input", () => {
      state.smoothing = Number(slider.value);
      document.getElementById("smoothing-value").textContent = slider.value;
      redraw();
    });
    return {load, append, setScoreExtras};
  }

  function runPage(panels) {
    const runId = panels.dataset.runId;
    const charts = runCharts(panels.dataset.paper === "" ? null : Number(panels.dataset.paper));
    const loaded = charts.load(runId);
    const extras = () => typeof Lab !== "undefined" && loaded.then(() => Lab.runScoreExtras(runId, charts.setScoreExtras));
    extras();
    const refresh = liveFragment(panels, (message) => {
      if (message.type === "evaluation") extras();
      if (message.type !== "metrics") return true;
      loaded.then(() => charts.append(message.data.points));
      return false;  // metric points never change the panels
    });
    const actions = {
      backup: () => api("POST", url(`/api/runs/${runId}/backup`)).then((c) => {
        document.getElementById("backup-state").textContent = `backup ${c.state}`;
      }),
      cancel: () => (window.confirm("Cancel this run?") ? api("POST", url(`/api/runs/${runId}/cancel`)) : null),
      retry: () => api("POST", url(`/api/runs/${runId}/retry`)),
      figures: () => api("POST", url(`/api/runs/${runId}/figures`)),
    };
    panels.addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      button.disabled = true;
      try {
        await actions[button.dataset.action]();
        showError("");
        refresh();
      } catch (e) {
        showError(`${button.textContent.trim()} failed: ${e.message}`);
        if (button.dataset.action === "backup") document.getElementById("backup-state").textContent = `backup error: ${e.message}`;
      } finally {
        button.disabled = false;
      }
    });
  }

  return {api, url, liveFragment, newRunForm, runPage, typedValue};
})();
