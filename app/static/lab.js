// Working over many runs: picking runs to compare, the sweep form, a sweep's cancel button,
// a run's labels (tags, note, archive, delete), the comparison page's charts and the workers page.
// Requests go through Dashboard.api (session cookie + CSRF header); markup comes from templates.
"use strict";

const Lab = (() => {
  const showError = (message) => {
    const el = document.getElementById("api-error");
    el.textContent = message;
    el.hidden = !message;
  };

  // The runs table is re-rendered on every live update: the ticked runs are kept here and
  // ticked again after each re-render.
  function runSelection(table) {
    const picked = new Set();
    const button = document.getElementById("compare-selected");
    const count = document.getElementById("selected-count");
    const sync = () => {
      table.querySelectorAll("input.pick").forEach((box) => { box.checked = picked.has(box.value); });
      button.disabled = picked.size < 1;
      count.textContent = picked.size ? `${picked.size} selected` : "";
    };
    table.addEventListener("change", (event) => {
      const box = event.target.closest("input.pick");
      if (!box) return;
      if (box.checked) picked.add(box.value); else picked.delete(box.value);
      sync();
    });
    new MutationObserver(sync).observe(table, {childList: true});
    button.addEventListener("click", () => {
      window.location.href = Dashboard.url(`/compare?runs=${[...picked].join(",")}`);
    });
    sync();
  }

  const list = (text, convert) => text.split(",").map((s) => s.trim()).filter((s) => s !== "").map(convert);

  // Seeds may be written as ranges: "0-4" or "0,1,2".
  function seeds(text) {
    const out = [];
    for (const part of list(text, String)) {
      const m = part.match(/^(\d+)\s*-\s*(\d+)$/);
      if (m) for (let s = Number(m[1]); s <= Number(m[2]) && out.length <= 1000; s++) out.push(s);
      else out.push(Number.isInteger(Number(part)) ? Number(part) : part);
    }
    return out;
  }

  const problemText = (e) => (Array.isArray(e.detail)
    ? e.detail.map((p) => `${p.loc.slice(1).join(".")}: ${p.msg}`) : [e.message]).join("; ");

  // Queues a sweep (a request body for POST /api/sweeps) and opens its page; a 422 is shown in `error`.
  async function queueSweep(body, error) {
    error.hidden = true;
    try {
      const sweep = await Dashboard.api("POST", Dashboard.url("/api/sweeps"), body);
      window.location.href = Dashboard.url(`/sweeps/${sweep.id}`);
    } catch (e) {
      error.textContent = problemText(e);
      error.hidden = false;
    }
  }

  // The control that takes a setting's value in `field`: the one rendered for that setting
  // (data-setting: a select or checkboxes of its fixed choices), else the free-text one.
  // Only it is shown, so a setting with choices is never typed.
  function valueControl(field, setting) {
    const controls = [...field.querySelectorAll(".value")];
    const shown = controls.find((c) => c.dataset.setting === setting) || controls.find((c) => !c.dataset.setting);
    controls.forEach((c) => { c.hidden = c !== shown; });
    return shown;
  }

  // The sweep form, and the paper's ablations as one-click presets (buttons with data-sweep:
  // the request body). Values are typed by the config schema (each option's data-type).
  function sweepForm(form) {
    const error = document.getElementById("sweep-error");
    const typeOf = (select) => (select.selectedOptions[0] || {dataset: {}}).dataset.type;
    const values = form.ablation_values.closest(".field");
    form.querySelectorAll(".override > select:not(.value)").forEach((select) => {
      select.addEventListener("change", () => valueControl(select.parentElement, select.value));
    });
    form.ablation_setting.addEventListener("change", () => valueControl(values, form.ablation_setting.value));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const config = {};
      for (const row of form.querySelectorAll(".override")) {
        const select = row.querySelector("select");
        const value = Dashboard.typedValue(valueControl(row, select.value).value, typeOf(select));
        if (select.value && value !== null) config[select.value] = value;
      }
      const body = {name: form.name.value.trim() || null,
                    tasks: [...form.querySelectorAll("input[name=tasks]:checked")].map((b) => b.value),
                    seeds: seeds(form.seeds.value),
                    variants: [...form.querySelectorAll("input[name=variants]:checked")].map((b) => b.value),
                    config};
      const setting = form.ablation_setting.value;
      if (setting) {
        const type = typeOf(form.ablation_setting);
        const control = valueControl(values, setting);
        const texts = control.tagName === "FIELDSET"
          ? [...control.querySelectorAll("input:checked")].map((box) => box.value) : control.value.split("\n");
        body.ablation = {setting, values: texts.map((text) => Dashboard.typedValue(text, type)).filter((v) => v !== null)};
      }
      queueSweep(body, error);
    });
    document.querySelectorAll("button[data-sweep]").forEach((button) => {
      button.addEventListener("click", () => queueSweep(JSON.parse(button.dataset.sweep), error));
    });
  }

  // Buttons with data-post (and an optional data-confirm) post to that URL, then reload.
  function postButtons(root) {
    root.addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-post]");
      if (!button || (button.dataset.confirm && !window.confirm(button.dataset.confirm))) return;
      button.disabled = true;
      try {
        await Dashboard.api(button.dataset.method || "POST", button.dataset.post);
        if (button.dataset.then) window.location.href = button.dataset.then; else window.location.reload();
      } catch (e) {
        showError(`${button.textContent.trim()} failed: ${e.message}`);
        button.disabled = false;
      }
    });
  }

  function runLabels(form) {
    const state = document.getElementById("labels-state");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await Dashboard.api("PATCH", form.dataset.url, {
          tags: form.tags.value.split(",").map((t) => t.trim()).filter(Boolean),
          note: form.note.value, archived: form.archived.checked});
        state.textContent = "saved";
        showError("");
      } catch (e) {
        state.textContent = `not saved: ${problemText(e)}`;
      }
    });
    postButtons(form);
  }

  // ---- comparison page --------------------------------------------------------------

  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                  "#bcbd22", "#7f7f7f", "#393b79", "#637939"];
  const DASHES = ["solid", "dash", "dot", "dashdot"];
  const CONFIG = {responsive: true, displaylogo: false, showSendToCloud: false, showEditInChartStudio: false,
                  modeBarButtonsToRemove: ["select2d", "lasso2d"]};
  // Quick and final evaluations differ by marker; R2's final by a filled square.
  const MARKERS = {"quick R1": "circle-open", "quick R2": "circle-open", "final R1": "diamond", "final R2": "square"};

  function groupRows(table, keyOf) {
    const idx = Object.fromEntries(table.columns.map((c, i) => [c, i]));
    const groups = new Map();
    for (const row of table.rows) {
      const key = keyOf(row, idx);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(row);
    }
    return {groups, idx};
  }

  // The run page's score chart: its evaluations and, for its task, a reference curve.
  async function runScoreExtras(runId, set) {
    try {
      const table = await Dashboard.api("GET", Dashboard.url(`/api/runs/${runId}/charts/score.json`));
      set(scoreTraces(table, () => "#374151", false));
    } catch (e) {
      showError(`Could not load the evaluations: ${e.message}`);
    }
  }

  function scoreTraces(table, colorOf, withRun = true) {
    const {groups, idx} = groupRows(table, (r, i) => `${r[i.run_id]}|${r[i.kind]}|${r[i.variant]}`);
    return [...groups.values()].map((rows) => {
      const r0 = rows[0];
      const kind = r0[idx.kind];
      const x = rows.map((r) => r[idx.step]);
      const y = rows.map((r) => r[idx.score_mean]);
      if (kind === "reference") {
        const source = r0[idx.source];
        return {type: "scatter", mode: "lines+markers", name: `reference: ${source.split(" (")[0]}`, x, y, meta: source,
                hovertemplate: "%{y:.1f} at step %{x:,}<br>%{meta}<extra></extra>",
                line: {color: "#111", dash: "dash", width: 1.5}, marker: {size: 4, color: "#111"}};
      }
      const variant = r0[idx.variant];
      return {type: "scatter", mode: kind === "quick" ? "lines+markers" : "markers",
              name: `${withRun ? `${r0[idx.run]} · ` : ""}${kind} ${variant} (± std over episodes)`,
              legendgroup: String(r0[idx.run_id]),
              x, y, error_y: {type: "data", array: rows.map((r) => r[idx.score_std] || 0), visible: true, thickness: 1},
              line: {color: colorOf(r0[idx.run_id]), width: 1},
              marker: {symbol: MARKERS[`${kind} ${variant}`] || "circle", size: kind === "final" ? 12 : 7,
                       color: colorOf(r0[idx.run_id])}};
    });
  }

  // Each run's series of one metric chart: run id, key, steps, values and wall times.
  function runSeries(table) {
    const {groups, idx} = groupRows(table, (r, i) => `${r[i.run_id]}|${r[i.key]}`);
    return [...groups.values()].map((rows) => ({
      runId: rows[0][idx.run_id], label: rows[0][idx.run], key: rows[0][idx.key],
      steps: rows.map((r) => r[idx.step]), values: rows.map((r) => r[idx.value]), walls: rows.map((r) => r[idx.wall_time]),
    }));
  }

  // y at x on the polyline (xs ascending), or null outside it or next to a gap.
  function interpolate(xs, ys, x) {
    if (!xs.length || x < xs[0] || x > xs[xs.length - 1]) return null;
    let hi = 0;
    while (xs[hi] < x) hi++;
    if (xs[hi] === x) return ys[hi];
    const [x0, y0, y1] = [xs[hi - 1], ys[hi - 1], ys[hi]];
    return y0 === null || y1 === null ? null : y0 + ((y1 - y0) * (x - x0)) / (xs[hi] - x0);
  }

  const BANDS = {minmax: "band min–max over the runs", sem: "band ± s.e. of the mean over the runs"};
  // Several runs' curves as one: at every x any of them has, the mean of those that reach it
  // (linearly interpolated between their own points), and a band: min–max, or the mean ± its
  // standard error (one run: no spread). `curves`: [{x, y}], each x ascending.
  function aggregate(curves, band) {
    const xs = [...new Set(curves.flatMap((c) => c.x))].sort((a, b) => a - b);
    const out = {x: [], mean: [], lo: [], hi: [], n: []};
    for (const x of xs) {
      const ys = curves.map((c) => interpolate(c.x, c.y, x)).filter((y) => y !== null && Number.isFinite(y));
      if (!ys.length) continue;
      const mean = ys.reduce((a, b) => a + b, 0) / ys.length;
      const sem = ys.length > 1 ? Math.sqrt(ys.reduce((a, y) => a + (y - mean) ** 2, 0) / (ys.length - 1) / ys.length) : 0;
      out.x.push(x); out.mean.push(mean); out.n.push(ys.length);
      out.lo.push(band === "sem" ? mean - sem : Math.min(...ys));
      out.hi.push(band === "sem" ? mean + sem : Math.max(...ys));
    }
    return out;
  }

  const fade = (hex, alpha) => `rgba(${[1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)).join(",")},${alpha})`;

  // A group's mean line with its band: the band's edges (no legend entry of their own), the
  // faint unsmoothed mean, and the smoothed mean, which names the band in legend and hover.
  // `floor`: on a log axis, its logFloor (values under it are gaps); null on a linear one.
  function bandTraces(name, color, raw, smooth, group, band, dash, floor) {
    const keep = floor === null ? (ys) => ys : (ys) => Dashboard.positive(ys, floor);
    const lines = {type: "scatter", mode: "lines", legendgroup: group, showlegend: false, hoverinfo: "skip"};
    const text = smooth.x.map((_, i) => `n = ${smooth.n[i]}, band ${smooth.lo[i].toPrecision(3)} – ${smooth.hi[i].toPrecision(3)}`);
    return [
      {...lines, name: `${name} (band low)`, x: smooth.x, y: keep(smooth.lo), line: {width: 0, color}, meta: "band"},
      {...lines, name: `${name} (band high)`, x: smooth.x, y: keep(smooth.hi), line: {width: 0, color}, meta: "band",
       fill: "tonexty", fillcolor: fade(color, 0.18)},
      {...lines, name: `${name} (raw mean)`, x: raw.x, y: keep(raw.mean), opacity: 0.3, line: {color, width: 1, dash}},
      {type: "scatter", mode: smooth.x.length < 40 ? "lines+markers" : "lines", legendgroup: group,
       name: `${name} — mean, ${BANDS[band]}`, x: smooth.x, y: keep(smooth.mean), text, meta: "mean",
       hovertemplate: "%{y:.4~g} (%{text})<extra>%{fullData.name}</extra>", line: {color, width: 2, dash}},
    ];
  }

  // The comparison page: runs' curves on shared axes with the run page's controls (smoothing,
  // log scale, step or wall time), runs that differ only by seed as one mean line and band
  // (or, toggled, each run), stage marks, and the reference score curve clipped to the runs'
  // steps. A zoom on one chart moves all of them.
  async function comparePage(root) {
    const ids = root.dataset.runs;
    const status = document.getElementById("compare-status");
    let data;
    try {
      data = await Dashboard.api("GET", Dashboard.url(`/api/compare?runs=${ids}&max_points=1000`));
    } catch (e) {
      status.textContent = `Could not load the charts: ${e.message}`;
      return;
    }
    // The page picks each run's colour (its swatch's index): one per run, or one per value of
    // the setting the page is coloured by (?color_by=). A group takes its first run's colour.
    const colorIndex = new Map([...document.querySelectorAll("tr[data-run-id]")].map((row) =>
      [Number(row.dataset.runId), Number(row.querySelector(".swatch").dataset.index)]));
    const colorOf = (runId) => COLORS[colorIndex.get(runId) % COLORS.length];
    document.querySelectorAll(".swatch").forEach((el) => {
      el.style.background = COLORS[Number(el.dataset.index) % COLORS.length];
    });
    const control = (id) => document.getElementById(id);
    const state = {smoothing: Number(control("compare-smoothing").value), logY: true, x: "step",
                   grouped: control("compare-grouped").checked, band: control("compare-band").value, xRange: null};
    const groupOf = new Map(data.runs.map((r) => [r.id, data.groups[r.group]]));
    const grouped = (runId) => state.grouped && groupOf.get(runId).run_ids.length > 1;
    const marksOf = new Map(data.runs.map((r) => [r.id, r.marks]));
    const restarts = (runId) => marksOf.get(runId).filter((m) => m.kind === "reflow").map((m) => m.step);
    const metric = Object.fromEntries(Object.entries(data.charts).filter(([id]) => id !== "score")
      .map(([id, table]) => [id, runSeries(table)]));

    // Wall time as time since each run's first logged point (runs started days apart compare
    // by how long they took), in hours, or minutes when every run took under two hours.
    const firstWall = new Map();
    const clock = new Map();  // run id -> {steps, walls} of its first series: steps to wall time
    for (const s of Object.values(metric).flat()) {
      if (!s.walls.length) continue;
      firstWall.set(s.runId, Math.min(firstWall.has(s.runId) ? firstWall.get(s.runId) : Infinity, ...s.walls));
      if (!clock.has(s.runId)) clock.set(s.runId, {steps: s.steps, walls: s.walls});
    }
    const longest = Math.max(0, ...Object.values(metric).flat().map((s) => Math.max(...s.walls) - firstWall.get(s.runId)));
    const unit = longest < 7200 ? {name: "minutes", s: 60} : {name: "hours", s: 3600};
    const elapsed = (runId, wall) => (wall === null || wall === undefined || !firstWall.has(runId) ? null
      : (wall - firstWall.get(runId)) / unit.s);
    const atStep = (runId, step) => (clock.has(runId) ? elapsed(runId, interpolate(clock.get(runId).steps,
      clock.get(runId).walls, step)) : null);
    const xsOf = (s) => (state.x === "step" ? s.steps.slice() : s.walls.map((w) => elapsed(s.runId, w)));

    function curve(s, floor) {
      const y = floor === null ? s.values.slice() : Dashboard.positive(s.values, floor);
      const smooth = state.smoothing > 0 ? Dashboard.smoothed(s.steps, y, state.smoothing, restarts(s.runId)) : y;
      return {x: xsOf(s), raw: y, y: smooth};
    }

    function metricTraces(chartId, logY) {
      const all = metric[chartId];
      const keys = [...new Set(all.map((s) => s.key))];
      const out = [];
      const dashOf = (key) => DASHES[keys.indexOf(key) % DASHES.length];
      const floor = logY ? Dashboard.logFloor(all.map((s) => s.values)) : null;
      const nameOf = (label, key) => (keys.length > 1 ? `${label} · ${key}` : label);
      for (const s of all.filter((t) => !grouped(t.runId))) {
        const c = curve(s, floor);
        const color = colorOf(s.runId);
        const mode = s.steps.length < 40 ? "lines+markers" : "lines";
        if (state.smoothing > 0) {
          out.push({type: "scatter", mode, name: `${nameOf(s.label, s.key)} (raw)`, legendgroup: String(s.runId),
                    showlegend: false, opacity: 0.25, x: c.x, y: c.raw, line: {color, width: 1, dash: dashOf(s.key)}});
        }
        out.push({type: "scatter", mode, name: nameOf(s.label, s.key), legendgroup: String(s.runId), x: c.x, y: c.y,
                  line: {color, width: 1.6, dash: dashOf(s.key)}});
      }
      for (const g of data.groups.filter((gr) => grouped(gr.run_ids[0]))) {
        for (const key of keys) {
          const members = all.filter((s) => s.key === key && g.run_ids.includes(s.runId)).map((s) => curve(s, floor));
          if (!members.length) continue;
          const raw = aggregate(members.map((c) => ({x: c.x, y: c.raw})), state.band);
          const smooth = aggregate(members.map((c) => ({x: c.x, y: c.y})), state.band);
          out.push(...bandTraces(nameOf(g.label, key), colorOf(g.run_ids[0]), raw, smooth, `group${g.id}`,
                                 state.band, dashOf(key), floor));
        }
      }
      return out;
    }

    // The reference curve clipped to the runs' steps: it runs to 86k steps, and drawn whole it
    // squeezes runs of a few hundred steps into a sliver. Its last point is interpolated at the
    // runs' last step. When none of it lies within their steps it is left in the legend only
    // (click to show it). Not drawn against wall time (it has none).
    function clippedReference(trace, range) {
      if (state.x !== "step" || !range) return null;
      const [lo, hi] = range;
      const keep = trace.x.map((x, i) => [x, trace.y[i]]).filter(([x]) => x >= lo && x <= hi);
      const end = interpolate(trace.x, trace.y, hi);
      if (end !== null && (!keep.length || keep[keep.length - 1][0] < hi)) keep.push([hi, end]);
      const clipped = trace.x[trace.x.length - 1] > hi;
      if (!keep.length) {
        return {...trace, visible: "legendonly",
                name: `${trace.name} (from step ${trace.x[0].toLocaleString("en-US")}: past the runs' steps)`};
      }
      return {...trace, x: keep.map((p) => p[0]), y: keep.map((p) => p[1]),
              name: clipped ? `${trace.name} (clipped to the runs' steps; it runs to ${trace.x[trace.x.length - 1].toLocaleString("en-US")})` : trace.name};
    }

    function scoreChartTraces(range) {
      const table = data.charts.score;
      const traces = scoreTraces(table, colorOf);
      const out = [];
      const groupedRows = new Map();  // group|kind|variant -> {group, kind, variant, curves}
      for (const t of traces) {
        if (t.name.startsWith("reference")) {
          const ref = clippedReference(t, range);
          if (ref) out.push(ref);
          continue;
        }
        const runId = Number(t.legendgroup);
        const x = state.x === "step" ? t.x : t.x.map((step) => atStep(runId, step));
        if (!grouped(runId)) { out.push({...t, x}); continue; }
        const [kind, variant] = t.name.split(" · ")[1].split(" (")[0].split(" ");
        const key = `${groupOf.get(runId).id}|${kind}|${variant}`;
        if (!groupedRows.has(key)) groupedRows.set(key, {group: groupOf.get(runId), kind, variant, curves: []});
        groupedRows.get(key).curves.push({x, y: t.y});
      }
      for (const {group, kind, variant, curves} of groupedRows.values()) {
        const agg = aggregate(curves, state.band);
        const color = colorOf(group.run_ids[0]);
        if (kind === "quick") {
          const lines = bandTraces(`${group.label} · quick ${variant}`, color, agg, agg, `group${group.id}`, state.band, "solid", null);
          out.push(...lines.filter((t) => !t.name.endsWith("(raw mean)")));
        } else {
          out.push({type: "scatter", mode: "markers", name: `${group.label} · ${kind} ${variant} — mean, ${BANDS[state.band]}`,
                    legendgroup: `group${group.id}`, x: agg.x, y: agg.mean, meta: "mean",
                    error_y: {type: "data", symmetric: false, array: agg.hi.map((h, i) => h - agg.mean[i]),
                              arrayminus: agg.lo.map((l, i) => agg.mean[i] - l), visible: true, thickness: 1},
                    marker: {symbol: MARKERS[`${kind} ${variant}`] || "circle", size: 12, color}});
        }
      }
      return out;
    }

    // One x range for every chart, from the runs' own points (never the reference curve's).
    function sharedRange() {
      if (state.xRange) return state.xRange;
      const xs = Object.values(metric).flat().flatMap(xsOf).filter((x) => x !== null);
      const score = data.charts.score;
      const i = Object.fromEntries(score.columns.map((c, k) => [c, k]));
      for (const r of score.rows) {
        if (r[i.run_id] === null) continue;
        const x = state.x === "step" ? r[i.step] : atStep(r[i.run_id], r[i.step]);
        if (x !== null) xs.push(x);
      }
      if (!xs.length) return null;
      const [lo, hi] = [Math.min(...xs), Math.max(...xs)];
      const pad = hi > lo ? (hi - lo) * 0.02 : (state.x === "step" ? 1 : 1 / 60);
      return [lo - pad, hi + pad];
    }

    function marksLayout() {
      const seen = new Set();
      const marks = [];
      for (const run of data.runs) {
        for (const m of run.marks) {
          const key = m.kind === "reflow" ? `reflow|${state.x === "step" ? m.step : run.id}` : `${run.id}|${m.step}|${m.wall_time}`;
          if (seen.has(key)) continue;
          seen.add(key);
          marks.push({...m, runId: run.id, label: m.kind === "reflow" ? m.label : `#${run.id} ${m.label}`});
        }
      }
      return Dashboard.markLayout(marks, (m) => (state.x === "step" ? m.step : elapsed(m.runId, m.wall_time)));
    }

    function draw(div) {
      const id = div.dataset.chart;
      const table = data.charts[id];
      const logY = Boolean(table.log_y) && state.logY;
      const range = sharedRange();
      const traces = id === "score" ? scoreChartTraces(range && [range[0], range[1]]) : metricTraces(id, logY);
      const empty = !traces.length;
      const legend = traces.filter((t) => t.showlegend !== false).length;
      div.dataset.traces = String(traces.length);
      const xaxis = state.x === "step" ? Dashboard.stepAxis(range)
        : {title: {text: `${unit.name} since the run's first logged point`, standoff: 4}, type: "linear"};
      const marked = empty ? {shapes: [], annotations: []} : marksLayout();
      return Plotly.react(div, traces, {
        autosize: true, height: 300 + 20 * legend, margin: {l: 60, r: 12, t: 10, b: 40}, showlegend: true,
        legend: {orientation: "h", x: 0, y: -0.12, yanchor: "top"}, uirevision: `${state.x}-${state.logY}`,
        xaxis: {...xaxis, range: range || undefined, autorange: !range},
        yaxis: Dashboard.yAxis(table.y_title, logY, traces.filter((t) => t.meta !== "band").map((t) => t.y)),
        shapes: marked.shapes,
        annotations: [...marked.annotations,
          ...(empty ? [{text: "no data", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5}] : [])],
      }, CONFIG);
    }

    const plots = [...root.querySelectorAll(".plot")];
    const redraw = () => Promise.all(plots.map(draw));
    function followZoom(event) {
      if (event["xaxis.autorange"]) state.xRange = null;
      else if (event["xaxis.range[0]"] !== undefined) state.xRange = [event["xaxis.range[0]"], event["xaxis.range[1]"]];
      else if (Array.isArray(event["xaxis.range"])) state.xRange = event["xaxis.range"].slice();
      else return;
      redraw();
    }
    control("compare-smoothing").addEventListener("input", (e) => {
      state.smoothing = Number(e.target.value);
      control("compare-smoothing-value").textContent = e.target.value;
      redraw();
    });
    control("compare-log-y").addEventListener("change", (e) => { state.logY = e.target.checked; redraw(); });
    control("compare-x").addEventListener("change", (e) => { state.x = e.target.value; state.xRange = null; redraw(); });
    control("compare-grouped").addEventListener("change", (e) => { state.grouped = e.target.checked; redraw(); });
    control("compare-band").addEventListener("change", (e) => { state.band = e.target.value; redraw(); });
    await redraw();
    plots.forEach((div) => div.on("plotly_relayout", followZoom));
    status.textContent = "";
    root.dataset.ready = "true";
  }

  // ---- ablation view -----------------------------------------------------------------

  // Each ablation's score against planning frequency (the speed/score trade-off): one point
  // per value of the varied setting and variant, error bars = standard error over seeds, drawn
  // from GET /api/results (the same answer scripts get). A row without a measured latency has no x.
  // The compare page's videos come with the page; each caption gets its episode's score from
  // the plans JSON beside the video (none when the worker uploaded no plans).
  function videoScores(section) {
    if (!section) return;
    section.querySelectorAll("figure[data-plans]").forEach(async (figure) => {
      const doc = await Dashboard.api("GET", figure.dataset.plans).catch(() => null);
      if (doc) figure.querySelector(".episode-score").textContent = ` · episode score ${doc.score.toFixed(1)}`;
    });
  }

  async function ablationCharts(root) {
    const status = document.getElementById("ablation-status");
    const sweep = root.dataset.sweep;
    let data;
    try {
      data = await Dashboard.api("GET", Dashboard.url(`/api/results${sweep ? `?sweep=${sweep}` : ""}`));
    } catch (e) {
      status.textContent = `Could not load the charts: ${e.message}`;
      return;
    }
    const views = new Map(data.ablations.map((v) => [String(v.sweep_id), v]));
    const draws = [...root.querySelectorAll(".ablation-chart")].map((div) => {
      const view = views.get(div.dataset.sweep);
      const traces = view.variants.map((variant, i) => {
        const rows = view.rows.filter((r) => r.variant === variant && r.mean !== null && r.planning.hz_1env);
        return {type: "scatter", mode: "markers+text", name: `${variant} (± s.e. over seeds)`,
                x: rows.map((r) => r.planning.hz_1env), y: rows.map((r) => r.mean),
                text: rows.map((r) => r.value_text), textposition: "top right",
                hovertemplate: `${view.setting} = %{text}<br>score %{y:.1f}<br>%{x:.1f} Hz<extra>${variant}</extra>`,
                error_y: {type: "data", array: rows.map((r) => r.sem || 0), visible: true, thickness: 1},
                error_x: {type: "data", array: rows.map((r) => r.planning.hz_1env_sem || 0), visible: true, thickness: 1},
                marker: {size: 10, color: COLORS[i]}};
      }).filter((t) => t.x.length);
      const empty = !traces.length;
      div.dataset.points = String(traces.reduce((n, t) => n + t.x.length, 0));
      return Plotly.react(div, traces, {
        autosize: true, height: empty ? 120 : 340, margin: {l: 60, r: 12, t: 10, b: 50}, showlegend: !empty,
        xaxis: {visible: !empty, title: {text: "planning Hz (1000 / one-environment latency)", standoff: 4},
                automargin: true},
        yaxis: {visible: !empty, title: {text: "D4RL normalised score"}, automargin: true},
        annotations: empty ? [{text: "no finished run with a measured planning latency yet", showarrow: false,
                               xref: "paper", yref: "paper", x: 0.5, y: 0.5}] : [],
      }, CONFIG);
    });
    await Promise.all(draws);
    status.textContent = "";
    root.dataset.ready = "true";
  }

  // ---- workers page -----------------------------------------------------------------

  // The fleet table re-renders on run changes and every 10 s (an idle worker's last poll ages
  // without changing any run), except while a cap is being typed in; a cap is a PATCH.
  function fleet(root) {
    const editing = () => root.contains(document.activeElement) && document.activeElement.tagName === "INPUT";
    const refresh = Dashboard.liveFragment(root, () => !editing());
    setInterval(() => { if (!editing()) refresh(); }, 10000);
    postButtons(root);
    root.addEventListener("submit", async (event) => {
      const form = event.target.closest("form.worker-cap");
      if (!form) return;
      event.preventDefault();
      const text = form.max_runs.value.trim();
      try {
        await Dashboard.api("PATCH", form.dataset.url, {max_runs: text === "" ? null : Number(text)});
        showError("");
        form.max_runs.blur();
        refresh();
      } catch (e) {
        showError(`Setting the cap failed: ${problemText(e)}`);
      }
    });
  }

  return {runSelection, sweepForm, postButtons, runLabels, comparePage, runScoreExtras, ablationCharts, videoScores,
          fleet};
})();
