// DiffuserLite Lab dashboard: live fragments, the new-run form and the run page's charts.
// Markup comes from the server's templates; this file only fetches, re-fetches on
// server-sent events, and feeds Plotly. No token is ever handled here: requests ride on
// the session cookie and echo the readable `csrf` cookie as X-CSRF-Token.
"use strict";

const Dashboard = (() => {
  const banner = () => document.getElementById("api-error");

  function showError(message) {
    const el = banner();
    el.textContent = message;
    el.hidden = !message;
  }

  function csrf() {
    const m = document.cookie.match(/(?:^|;\s*)csrf=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  // fetch() for the JSON API; a failure is thrown as an Error with the server's message
  // and `detail` (FastAPI's list for 422s) so callers can show it by the field.
  async function api(method, url, body) {
    const init = {method, credentials: "same-origin", headers: {"X-CSRF-Token": csrf()}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
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
          if (r.redirected && new URL(r.url).pathname === "/login") {
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

  function readValue(input) {
    const raw = input.value.trim();
    if (raw === "") return null;
    const number = (s) => (s !== "" && Number.isFinite(Number(s)) ? Number(s) : s);
    if (input.dataset.type === "int_list") return raw.split(",").map((s) => number(s.trim()));
    if (input.dataset.type === "int" || input.dataset.type === "float") return number(raw);
    return raw;
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
      form.querySelectorAll("input[data-type]").forEach((input) => {
        if (input.value !== input.defaultValue) config[input.name] = readValue(input);
      });
      const body = {task: form.task.value, name: form.name.value.trim() || null, config};
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const run = await api("POST", "/api/runs", body);
        window.location.href = `/runs/${run.id}`;
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

  function ema(values, alpha, start) {
    const out = new Array(values.length);
    let s = start;
    for (let i = 0; i < values.length; i++) {
      s = s === undefined ? values[i] : alpha * s + (1 - alpha) * values[i];
      out[i] = s;
    }
    return out;
  }

  function runCharts(paper) {
    const state = {smoothing: 0, x: "step", logY: true};
    const series = {};  // key -> {steps, values, walls, last smoothed value}
    const charts = [...document.querySelectorAll(".plot")].map((div) => ({
      div, keys: div.dataset.keys.split(","), title: div.dataset.title,
      logY: div.dataset.logY === "true", isScore: div.id === "chart-score",
    }));
    const status = document.getElementById("charts-status");

    // Always new arrays: Plotly keeps the ones it is given, and `series` keeps growing.
    const xOf = (steps, walls) => (state.x === "step" ? steps.slice() : walls.map((w) => new Date(w * 1000)));
    const smooth = (key, values, continuing) => {
      const s = series[key];
      const start = continuing ? s.smoothed : undefined;
      const out = state.smoothing > 0 ? ema(values, state.smoothing, start) : values.slice();
      if (out.length) s.smoothed = out[out.length - 1];
      return out;
    };

    function draw(chart) {
      const traces = chart.keys.map((key) => {
        const s = series[key];
        return {name: key, type: "scatter", mode: chart.isScore ? "lines+markers" : "lines",
                x: xOf(s.steps, s.walls), y: smooth(key, s.values, false), line: {width: 1.5}};
      });
      const empty = chart.keys.every((k) => !series[k].steps.length);
      const layout = {
        title: {text: chart.title, font: {size: 14}}, autosize: true, height: 320,
        margin: {l: 50, r: 10, t: 40, b: 70}, legend: {orientation: "h", y: -0.35},
        uirevision: `${state.x}-${state.logY}`,
        xaxis: {title: {text: state.x === "step" ? "step" : "wall time"}, type: state.x === "step" ? "linear" : "date"},
        yaxis: {type: chart.logY && state.logY ? "log" : "linear"},
        annotations: empty ? [{text: "no data yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5}] : [],
        shapes: chart.isScore ? [{type: "line", xref: "paper", x0: 0, x1: 1, y0: paper, y1: paper,
                                  line: {dash: "dash", width: 1}}] : [],
      };
      if (chart.isScore) {
        layout.annotations.push({text: `paper ${paper}`, showarrow: false, xref: "paper", x: 1,
                                 xanchor: "right", y: paper, yanchor: "bottom"});
      }
      chart.empty = empty;
      Plotly.react(chart.div, traces, layout, {responsive: true, displaylogo: false});
    }

    // New points only (step beyond the newest drawn), appended without touching the zoom.
    function append(points) {
      const fresh = {};
      for (const p of points) {
        const s = series[p.key];
        if (!s) continue;
        const lastStep = s.steps.length ? s.steps[s.steps.length - 1] : -1;
        if (p.step <= lastStep) continue;
        s.steps.push(p.step); s.values.push(p.value); s.walls.push(p.wall_time);
        (fresh[p.key] = fresh[p.key] || []).push(p);
      }
      for (const chart of charts) {
        const idx = chart.keys.map((k, i) => (fresh[k] ? i : -1)).filter((i) => i >= 0);
        if (!idx.length) continue;
        if (chart.empty) { draw(chart); continue; }
        const xs = idx.map((i) => { const f = fresh[chart.keys[i]]; return xOf(f.map((p) => p.step), f.map((p) => p.wall_time)); });
        const ys = idx.map((i) => smooth(chart.keys[i], fresh[chart.keys[i]].map((p) => p.value), true));
        Plotly.extendTraces(chart.div, {x: xs, y: ys}, idx);
      }
    }

    async function load(runId) {
      for (const chart of charts) for (const key of chart.keys) series[key] = {steps: [], values: [], walls: []};
      try {
        const data = await api("GET", `/api/runs/${runId}/charts?max_points=1000`);
        for (const [key, s] of Object.entries(data.series)) {
          if (series[key]) series[key] = {steps: s.steps, values: s.values, walls: s.wall_times};
        }
        status.textContent = "";
      } catch (e) {
        status.textContent = `Could not load the charts: ${e.message}`;
        status.classList.add("error");
      }
      charts.forEach(draw);
    }

    const redraw = () => charts.forEach(draw);
    document.getElementById("log-y").addEventListener("change", (e) => { state.logY = e.target.checked; redraw(); });
    document.getElementById("x-axis").addEventListener("change", (e) => { state.x = e.target.value; redraw(); });
    const slider = document.getElementById("smoothing");
    slider.addEventListener("input", () => {
      state.smoothing = Number(slider.value);
      document.getElementById("smoothing-value").textContent = slider.value;
      redraw();
    });
    return {load, append};
  }

  function runPage(panels) {
    const runId = panels.dataset.runId;
    const charts = runCharts(Number(panels.dataset.paper));
    const loaded = charts.load(runId);
    const refresh = liveFragment(panels, (message) => {
      if (message.type !== "metrics") return true;
      loaded.then(() => charts.append(message.data.points));
      return false;  // metric points never change the panels
    });
    const actions = {
      backup: () => api("POST", `/api/runs/${runId}/backup`).then((c) => {
        document.getElementById("backup-state").textContent = `backup ${c.state}`;
      }),
      cancel: () => (window.confirm("Cancel this run?") ? api("POST", `/api/runs/${runId}/cancel`) : null),
      retry: () => api("POST", `/api/runs/${runId}/retry`),
      figures: () => api("POST", `/api/runs/${runId}/figures`),
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

  return {api, liveFragment, newRunForm, runPage};
})();
