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

  // Next to the submit button, so a user who scrolled down to it sees why nothing started:
  // how many fields need a fix, each a link to its field, and any problem no field shows.
  function errorSummary(box, fields, messages) {
    box.replaceChildren();
    if (!fields.length && !messages.length) return;
    if (fields.length) {
      const line = document.createElement("p");
      line.append(`${fields.length} setting${fields.length > 1 ? "s need" : " needs"} a fix: `);
      fields.forEach((field, i) => {
        const link = document.createElement("a");
        link.href = `#f-${field}`;
        link.textContent = field;
        line.append(...(i ? [", ", link] : [link]));
      });
      box.append(line);
    }
    for (const message of messages) {
      const line = document.createElement("p");
      line.textContent = message;
      box.append(line);
    }
    box.hidden = false;
  }

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
      form.querySelectorAll("input[data-type], select[data-type]").forEach((input) => {
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
        const placed = [];
        for (const p of problems) {
          const field = p.loc[p.loc.length - 1];
          const slot = document.getElementById(`err-${field}`);
          if (slot) {
            slot.textContent = p.msg;
            const input = document.getElementById(`f-${field}`);
            if (input) input.setAttribute("aria-invalid", "true");
            placed.push(field);
          } else {
            unplaced.push(`${p.loc.join(".")}: ${p.msg}`);
          }
        }
        errorSummary(general, placed, unplaced);
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

  // ---- chart helpers, shared with the comparison page (lab.js) ------------------------

  const SMOOTHING_SPAN = 1000;  // the weight applies per 1/1000 of a series' steps (what the charts fetch)
  // Smoothing: an exponential moving average whose weight applies per 1/SMOOTHING_SPAN of the
  // series' step span, not per point (W&B's time-weighted EMA). A dense log (about 1000 points)
  // is smoothed as TensorBoard would with the same weight; a sparse one (a point per 1/30 of
  // the run) is barely touched, so its end stays on its last points instead of lagging 20-30 %
  // behind a falling loss. Dividing by the sum of the weights is TensorBoard's debiasing,
  // 1 - w^n for evenly spaced points: no pull toward 0 at the start. The average starts again
  // after each step in `restarts` (reflow: another objective), so a drop there is not smeared.
  function smoothed(steps, values, weight, restarts = []) {
    const out = new Array(values.length);
    const span = steps.length > 1 ? steps[steps.length - 1] - steps[0] : 0;
    const perStep = span > 0 ? SMOOTHING_SPAN / span : 0;
    let sum = 0;
    let norm = 0;
    let prev = null;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || !Number.isFinite(v)) { out[i] = v; continue; }
      if (prev !== null) {
        const decay = restarts.some((r) => prev <= r && r < steps[i]) ? 0 : Math.pow(weight, (steps[i] - prev) * perStep);
        sum *= decay;
        norm *= decay;
      }
      sum += v;
      norm += 1;
      out[i] = sum / norm;
      prev = steps[i];
    }
    return out;
  }

  const LOG_DECADES = 4;
  // The lowest value a log axis shows for these series: LOG_DECADES powers of ten below their
  // highest point, or their lowest point when that is higher. A learning rate decaying toward
  // 0 (1e-12 at the last logged step) would otherwise stretch the axis over ten decades and
  // squeeze the rest of the run into the top of the plot.
  function logFloor(valueLists) {
    let hi = -Infinity;
    let lo = Infinity;
    for (const values of valueLists) {
      for (const v of values) if (v > 0 && Number.isFinite(v)) { hi = Math.max(hi, v); lo = Math.min(lo, v); }
    }
    return hi > 0 ? Math.max(lo, hi / Math.pow(10, LOG_DECADES)) : 0;
  }

  // Values a log axis can draw: 0, negatives and values under `floor` (logFloor) become gaps.
  // Plotly would drop the line to the bottom edge as a vertical stroke (a cosine schedule's
  // learning rate ending at 0); the series' CSV keeps every point.
  const positive = (values, floor = 0) => values.map((v) => (v > 0 && v >= floor ? v : null));

  // Ticks for a log axis spanning under a decade, from `lo` to `hi`: the coarsest of these
  // steps within a decade that puts at least 3 ticks between them (0.02, 0.05, 0.1). Plotly's
  // own pick there is evenly spaced in value (0.02, 0.03, … 0.1), which crowds the top of a
  // log axis. null when even the finest puts fewer: a range that narrow is nearly linear,
  // and Plotly's even ticks read well on it.
  const SUBDECADE_STEPS = [[1, 2, 5], [1, 2, 3, 5], [1, 1.5, 2, 3, 4, 5, 7]];
  function subdecadeTicks(lo, hi) {
    for (const steps of SUBDECADE_STEPS) {
      const ticks = [];
      for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
        for (const m of steps) {
          const v = Number((m * Math.pow(10, e)).toPrecision(12));  // 0.07, not 0.07000000000000001
          if (v >= lo && v <= hi) ticks.push(v);
        }
      }
      if (ticks.length >= 3) return ticks;
    }
    return null;
  }

  // A y axis with its title (the quantity and its unit). A log axis starts at logFloor (its
  // autorange may not go lower). Ticks are 1-2-5 over up to 2.5 decades, else powers of ten;
  // never Plotly's every digit (its pick for a decade or two), whose labels as full numbers
  // (`~g`: 0.02, not "2") collide. Under a decade they are subdecadeTicks'.
  function yAxis(title, logY, valueLists) {
    const axis = {title: {text: title, standoff: 6, font: {size: 12}}, type: logY ? "log" : "linear", automargin: true};
    if (!logY) return axis;
    const floor = logFloor(valueLists);
    const hi = Math.max(0, ...valueLists.flat().filter((v) => Number.isFinite(v)));
    if (!(floor > 0)) return {...axis, tickformat: "~g"};
    const decades = Math.log10(hi / floor);
    const under = decades < 1 ? subdecadeTicks(floor, hi) : null;
    const ticks = decades >= 1 ? {dtick: decades <= 2.5 ? "D2" : 1} : under ? {tickmode: "array", tickvals: under} : {};
    return {...axis, tickformat: "~g", ...ticks, autorangeoptions: {minallowed: Math.log10(floor)}};
  }

  // A step axis: its title, and whole steps only. Plotly picks ticks 0.5 apart on a range of
  // a few steps (99.5, 100.5 on a run's first logs); such a range gets one tick per step.
  function stepAxis(range) {
    const axis = {title: {text: "step", standoff: 4}, type: "linear", tickformat: ",d"};
    return range && range[1] - range[0] <= 12 ? {...axis, tick0: 0, dtick: 1} : axis;
  }

  const MARK_STYLE = {reflow: {color: "#7c3aed", dash: "dash"}, resume: {color: "#b45309", dash: "dot"}};
  // Stage marks (where reflow starts, where an attempt resumed: GET /api/runs/{id}/charts
  // `marks`) as vertical lines across the plot, each labelled at its top; `xOf(mark)` places
  // one on the chart's x axis (null: not on it, e.g. a mark without a wall time).
  function markLayout(marks, xOf) {
    const shapes = [];
    const annotations = [];
    for (const mark of marks) {
      const x = xOf(mark);
      if (x === null || x === undefined) continue;
      const style = MARK_STYLE[mark.kind] || MARK_STYLE.resume;
      shapes.push({type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1, name: mark.kind,
                   line: {color: style.color, width: 1.2, dash: style.dash}});
      annotations.push({text: mark.label, x, xref: "x", y: 1, yref: "paper", xanchor: "left", yanchor: "top",
                        textangle: -90, showarrow: false, font: {size: 10, color: style.color}, name: mark.kind});
    }
    return {shapes, annotations};
  }

  function runCharts(paper) {
    const slider = document.getElementById("smoothing");
    const state = {smoothing: Number(slider.value), x: "step", logY: true, xRange: null};
    const series = {};  // key -> {steps, values, walls, bad: the non-finite points {steps, values, walls}}
    const charts = [...document.querySelectorAll(".plot")].map((div) => ({
      div, keys: div.dataset.keys.split(","), logY: div.dataset.logY === "true", yTitle: div.dataset.yTitle,
      smooth: div.dataset.smooth === "true", isScore: div.id === "chart-score",
    }));
    let marks = [];  // where reflow started and attempts resumed (stage_marks)
    let reflowPending = false;  // reflow's stage began: its mark comes with its first point
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
      const restarts = marks.filter((m) => m.kind === "reflow").map((m) => m.step);
      const floor = logFloor(chart.keys.map((k) => series[k].values));
      chart.keys.forEach((key, i) => {
        const s = series[key];
        const color = COLORS[i % COLORS.length];
        const mode = s.steps.length < SPARSE ? "lines+markers" : "lines";
        const smooth = chart.smooth && state.smoothing > 0;
        const raw = chart.logY && state.logY ? positive(s.values, floor) : s.values.slice();
        if (smooth) {  // the raw curve, faded, under the smoothed one
          out.push({name: `${key} (raw)`, type: "scatter", mode, x: xOf(s), y: raw.slice(), legendgroup: key,
                    showlegend: false, opacity: 0.25, line: {color, width: 1}, marker: {color, size: 4}});
        }
        out.push({name: key, type: "scatter", mode, x: xOf(s), legendgroup: key,
                  y: smooth ? smoothed(s.steps, raw, state.smoothing, restarts) : raw,
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
        xaxis: {visible: !empty, autorange: !range, range: range || undefined,
                ...(state.x === "step" ? stepAxis(range) : {title: {text: "wall time", standoff: 4}, type: "date"})},
        yaxis: {visible: !empty, ...yAxis(chart.yTitle, logY, chart.keys.map((k) => series[k].values))},
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
      if (!empty) {
        const marked = markLayout(marks, (m) => (state.x === "step" ? m.step
          : m.wall_time ? new Date(m.wall_time * 1000) : null));
        layout.shapes.push(...marked.shapes);
        layout.annotations.push(...marked.annotations);
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
      if (fresh && reflowPending) {
        reflowPending = false;
        reloadMarks();
      }
      if (fresh) redraw();
    }

    // The stage marks again, when the run's event log says one was added: an attempt resumed,
    // or reflow's stage began (its mark, placed at its first point, after the next points).
    let runIdOf = null;
    async function reloadMarks() {
      try {
        marks = (await api("GET", url(`/api/runs/${runIdOf}/charts?max_points=4`))).marks;
        redraw();
      } catch (e) {
        showError(`Could not load the stage marks: ${e.message}`);
      }
    }
    function noteEvent(text) {
      if (/^\w+ resumed from step \d+ \(/.test(text)) reloadMarks();
      else if (/^stage reflow_train started/.test(text)) reflowPending = true;
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
        runIdOf = runId;
        const data = await api("GET", url(`/api/runs/${runId}/charts?max_points=1000`));
        marks = data.marks || [];
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
    return {load, append, setScoreExtras, noteEvent};
  }

  // The worker's system samples (CPU, RAM, disk, GPU) on charts of their own, against wall
  // time: their steps are Unix seconds, which the training charts' step axis must not see.
  // A chart with no samples while others have some says why (its data-none: no GPU, no NVML).
  function systemCharts(section) {
    const charts = [...section.querySelectorAll(".system-plot")].map((div) => ({
      div, keys: div.dataset.keys.split(","), unit: div.dataset.unit,
    }));
    const series = {};  // key -> {walls, values}
    for (const chart of charts) for (const key of chart.keys) series[key] = {walls: [], values: []};
    const sampled = () => Object.values(series).some((s) => s.walls.length);

    function draw(chart) {
      const shown = chart.keys.filter((k) => series[k].walls.length);
      const empty = !shown.length;
      const note = sampled() && chart.div.dataset.none ? chart.div.dataset.none : "no samples yet";
      chart.div.dataset.empty = empty ? "true" : "false";
      const layout = {
        autosize: true, height: empty ? 90 : 220, margin: {l: 60, r: 12, t: 10, b: shown.length > 1 ? 64 : 40},
        showlegend: shown.length > 1, legend: {orientation: "h", x: 0, y: -0.35},
        xaxis: {visible: !empty, type: "date", title: {text: "wall time", standoff: 4}},
        yaxis: {visible: !empty, title: {text: chart.unit}, rangemode: "tozero", automargin: true},
        annotations: empty ? [{text: note, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
                               font: {size: 14, color: "#4b5563"}}] : [],
      };
      const traces = shown.map((key, i) => ({
        name: key.replace("system/", ""), type: "scatter", mode: "lines+markers",
        x: series[key].walls.map((w) => new Date(w * 1000)), y: series[key].values.slice(),
        line: {color: COLORS[i % COLORS.length], width: 1.5}, marker: {size: 4},
        hovertemplate: `%{y:.3~f} ${chart.unit}<extra>${key.replace("system/", "")}</extra>`,
      }));
      return Plotly.react(chart.div, traces, layout, PLOT_CONFIG);
    }
    const redraw = () => Promise.all(charts.map(draw));

    async function load() {
      try {
        const data = await api("GET", url(`/api/runs/${section.dataset.runId}/system?max_points=500`));
        for (const [key, s] of Object.entries(data.series)) {
          if (series[key]) series[key] = {walls: s.wall_times, values: s.values};
        }
      } catch (e) {
        showError(`Could not load the system metrics: ${e.message}`);
      }
      return redraw();
    }

    // Live samples from the run's stream (metrics messages); older or repeated ones are skipped.
    function append(points) {
      let fresh = false;
      for (const p of points) {
        const s = series[p.key];
        if (!s || p.value === null || (s.walls.length && p.wall_time <= s.walls[s.walls.length - 1])) continue;
        s.walls.push(p.wall_time); s.values.push(p.value);
        fresh = true;
      }
      if (fresh) redraw();
    }
    return {load, append};
  }

  // ---- evaluation episode: its video and plans ----------------------------------------

  const LEVEL_STYLES = [{color: "#1f77b4", symbol: "circle", size: 9}, {color: "#d62728", symbol: "diamond", size: 7},
                        {color: "#2ca02c", symbol: "square", size: 5}, {color: "#9467bd", symbol: "triangle-up", size: 5}];
  const stepText = (n) => Number(n).toLocaleString("en-US");

  // The videos to pick from: final evaluations before quick ones, newest checkpoint first, R1
  // before R2; each with its plans' URL when the worker uploaded them.
  function episodeVideos(artifacts) {
    const plans = new Map(artifacts.filter((a) => a.kind === "plans").map((a) => [a.name, a.url]));
    const order = (a, b) => (a.eval_kind !== b.eval_kind ? (a.eval_kind === "final" ? -1 : 1)
      : b.step - a.step || a.variant.localeCompare(b.variant));
    return artifacts.filter((a) => a.kind === "video").sort(order)
      .map((a) => ({...a, plansUrl: plans.get(a.name.replace(/\.webm$/, ".plans.json")) || null}));
  }

  function episodeCaption(video, doc) {
    const score = doc ? ` · episode score ${doc.score.toFixed(1)}` : "";
    return `${video.variant} · ${video.eval_kind} evaluation of checkpoint step ${stepText(video.step)}${score} — ` +
      "an extra recorded episode, not one of the scored ones";
  }

  // The plan chart's traces for state dimension `dim`: the states reached (a line, x = env
  // step), then each decision's levels, one colour and marker per level; a level's first
  // trace carries its legend entry ("level 0 (5 points over 129 steps)") for all of its traces.
  function planTraces(doc, dim) {
    const states = {name: "states reached", type: "scatter", mode: "lines", x: doc.states.map((_, t) => t),
                    y: doc.states.map((s) => s[dim]), line: {color: "#111827", width: 2}};
    const seen = new Set();
    const plans = doc.decisions.flatMap((d) => d.levels.map((level) => {
      const style = LEVEL_STYLES[level.level % LEVEL_STYLES.length];
      const first = !seen.has(level.level);
      seen.add(level.level);
      const span = level.times[level.times.length - 1] - level.times[0] + 1;
      return {name: `level ${level.level} (${level.points.length} points over ${span} steps)`, type: "scatter",
              mode: "lines+markers", x: level.times.slice(), y: level.points.map((p) => p[dim]),
              legendgroup: `level ${level.level}`, showlegend: first,
              line: {color: style.color, width: 1}, marker: {color: style.color, symbol: style.symbol, size: style.size},
              hovertemplate: `decision at t=${d.t}, level ${level.level}: %{y:.3~f} at step %{x}<extra></extra>`};
    }));
    return [states, ...plans];
  }

  function drawPlans(div, doc, dim) {
    const layout = {autosize: true, height: 300, margin: {l: 60, r: 12, t: 10, b: 80},
                    legend: {orientation: "h", x: 0, y: -0.3},
                    // the episode's steps: a late decision's plan reaches past its end (zoom out to see it)
                    xaxis: {title: {text: "env step", standoff: 4}, range: [0, Math.max(doc.states.length - 1, 1)]},
                    yaxis: {title: {text: doc.dims[dim].name}, automargin: true}};
    return Plotly.react(div, planTraces(doc, dim), layout, PLOT_CONFIG);
  }

  function dimChoice(select, doc) {
    select.replaceChildren(...doc.dims.map((d) => new Option(d.name, d.index, false, d.index === doc.default_dim)));
  }

  // The run page's evaluation episode: a video of the picked evaluation (the newest final one
  // first) and its plan chart; `load` re-reads the list when the worker uploads another.
  function episodeView(figure) {
    const el = (id) => document.getElementById(id);
    const [pick, video, caption, plansBox, dimSelect, chart] =
      ["episode-pick", "episode-video", "episode-caption", "episode-plans", "plan-dim", "plan-chart"].map(el);
    let videos = [];
    let doc = null;

    async function show(index) {
      const v = videos[index];
      if (video.dataset.src !== v.url) {
        video.dataset.src = v.url;
        video.src = v.url;
      }
      caption.textContent = episodeCaption(v, null);
      doc = v.plansUrl ? await api("GET", v.plansUrl).catch(() => null) : null;
      caption.textContent = episodeCaption(v, doc);
      plansBox.hidden = !doc;
      if (!doc) return;
      dimChoice(dimSelect, doc);
      await drawPlans(chart, doc, doc.default_dim);
    }

    async function load() {
      try {
        videos = episodeVideos(await api("GET", figure.dataset.artifacts));
      } catch (e) {
        showError(`Could not load the evaluation videos: ${e.message}`);
        return;
      }
      el("episode-none").hidden = videos.length > 0;
      video.hidden = !videos.length;
      pick.parentElement.hidden = videos.length < 2;
      if (!videos.length) return;
      const current = videos.findIndex((v) => v.url === video.dataset.src);
      pick.replaceChildren(...videos.map((v, i) => new Option(`${v.variant} ${v.eval_kind} · step ${stepText(v.step)}`, i)));
      pick.value = String(Math.max(current, 0));
      await show(Number(pick.value));
    }

    pick.addEventListener("change", () => show(Number(pick.value)));
    dimSelect.addEventListener("change", () => doc && drawPlans(chart, doc, Number(dimSelect.value)));
    video.addEventListener("error", () => {
      caption.textContent = "This video cannot be played here (its file may be missing on this server).";
    });
    return {load};
  }

  function runPage(panels) {
    const runId = panels.dataset.runId;
    const charts = runCharts(panels.dataset.paper === "" ? null : Number(panels.dataset.paper));
    const loaded = charts.load(runId);
    const system = systemCharts(document.getElementById("system-metrics"));
    const systemLoaded = system.load();
    const extras = () => typeof Lab !== "undefined" && loaded.then(() => Lab.runScoreExtras(runId, charts.setScoreExtras));
    extras();
    const episode = episodeView(document.getElementById("episode"));
    episode.load();
    const refresh = liveFragment(panels, (message) => {
      if (message.type === "artifact") { episode.load(); return false; }  // the panels show no artifact
      if (message.type === "evaluation") extras();
      if (message.type === "event") loaded.then(() => charts.noteEvent(message.data.message || ""));
      if (message.type !== "metrics") return true;
      loaded.then(() => charts.append(message.data.points));
      systemLoaded.then(() => system.append(message.data.points));
      return false;  // metric points never change the panels
    });
    // The status ages without any change to the run (its clock, a silent worker's lease, its
    // place in the queue), so no message says "worker lost": while it says it ticks
    // (data-ticking), the panels are re-fetched every 10 s like the workers page, not in a
    // hidden tab, and at once when the tab shows again.
    const ticking = () => !document.hidden && panels.querySelector("[data-ticking]") !== null;
    setInterval(() => { if (ticking()) refresh(); }, 10000);
    document.addEventListener("visibilitychange", () => { if (ticking()) refresh(); });
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

  return {api, url, liveFragment, newRunForm, runPage, typedValue, smoothed, logFloor, positive, yAxis, stepAxis,
          markLayout};
})();
