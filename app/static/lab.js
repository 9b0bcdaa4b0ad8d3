// Working over many runs: picking runs to compare, the sweep form, a sweep's cancel button,
// a run's labels (tags, note, archive, delete) and the comparison page's charts.
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

  // The sweep form, and the paper's ablations as one-click presets (buttons with data-sweep:
  // the request body). Values are typed by the config schema (each option's data-type).
  function sweepForm(form) {
    const error = document.getElementById("sweep-error");
    const typeOf = (select) => (select.selectedOptions[0] || {dataset: {}}).dataset.type;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const config = {};
      for (const row of form.querySelectorAll(".override")) {
        const select = row.querySelector("select");
        const value = Dashboard.typedValue(row.querySelector("input").value, typeOf(select));
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
        body.ablation = {setting, values: form.ablation_values.value.split("\n")
          .map((line) => Dashboard.typedValue(line, type)).filter((v) => v !== null)};
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

  function metricTraces(table, colorOf, keys) {
    const {groups, idx} = groupRows(table, (r, i) => `${r[i.run_id]}|${r[i.key]}`);
    return [...groups.values()].map((rows) => {
      const [runId, label, key] = [rows[0][idx.run_id], rows[0][idx.run], rows[0][idx.key]];
      const many = keys.length > 1;
      return {type: "scatter", mode: rows.length < 40 ? "lines+markers" : "lines",
              name: many ? `${label} · ${key}` : label, legendgroup: String(runId),
              x: rows.map((r) => r[idx.step]), y: rows.map((r) => r[idx.value]),
              line: {color: colorOf(runId), width: 1.6, dash: DASHES[keys.indexOf(key) % DASHES.length]}};
    });
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
    // the setting the page is coloured by (?color_by=).
    const colorIndex = new Map([...document.querySelectorAll("tr[data-run-id]")].map((row) =>
      [Number(row.dataset.runId), Number(row.querySelector(".swatch").dataset.index)]));
    const colorOf = (runId) => COLORS[colorIndex.get(runId) % COLORS.length];
    document.querySelectorAll(".swatch").forEach((el) => {
      el.style.background = COLORS[Number(el.dataset.index) % COLORS.length];
    });
    // Shared axes: one step range for every chart, from all runs' data.
    const steps = Object.values(data.charts).flatMap((t) => {
      const i = t.columns.indexOf("step");
      return t.rows.map((r) => r[i]);
    });
    const [lo, hi] = [Math.min(...steps), Math.max(...steps)];
    const pad = hi > lo ? (hi - lo) * 0.02 : 1;
    const range = steps.length ? [lo - pad, hi + pad] : null;
    const draws = [];
    for (const div of root.querySelectorAll(".plot")) {
      const table = data.charts[div.dataset.chart];
      const traces = div.dataset.chart === "score" ? scoreTraces(table, colorOf)
        : metricTraces(table, colorOf, [...new Set(table.rows.map((r) => r[table.columns.indexOf("key")]))]);
      const empty = !traces.length;
      div.dataset.traces = String(traces.length);
      draws.push(Plotly.react(div, traces, {
        autosize: true, height: 300 + 20 * traces.length, margin: {l: 60, r: 12, t: 10, b: 40}, showlegend: true,
        legend: {orientation: "h", x: 0, y: -0.12, yanchor: "top"},
        xaxis: {title: {text: "step", standoff: 4}, range: range || undefined, autorange: !range},
        yaxis: {type: table.log_y ? "log" : "linear", tickformat: table.log_y ? "~g" : "", automargin: true},
        annotations: empty ? [{text: "no data", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5}] : [],
      }, CONFIG));
    }
    await Promise.all(draws);
    status.textContent = "";
    root.dataset.ready = "true";
  }

  // ---- ablation view -----------------------------------------------------------------

  // Each ablation's score against planning frequency (the speed/score trade-off): one point
  // per value of the varied setting and variant, error bars = standard error over seeds, drawn
  // from GET /api/results (the same answer scripts get). A row without a measured latency has no x.
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

  return {runSelection, sweepForm, postButtons, runLabels, comparePage, runScoreExtras, ablationCharts};
})();
