// Analytics: the tenant's events per tumbling window (1 m or 1 h), by type, as a uPlot chart.

import uPlot from "../../vendor/uPlot.esm.js";
import { tenantPath } from "../api.js";
import { clear, h, notice, problem, title } from "../dom.js";

const PALETTE = ["#2563eb", "#16a34a", "#db2777", "#d97706", "#7c3aed", "#0891b2", "#64748b"];
const SERIES_MAX = 6;
const STEP = { "1m": 60, "1h": 3600 };
const PAGES_MAX = 20;

async function counts(ctx, window) {
  const items = [];
  let after = null;
  for (let page = 0; page < PAGES_MAX; page += 1) {
    const doc = await ctx.client.get(tenantPath(ctx.tenant.id, "/analytics/events"), { window, limit: 1000, after });
    items.push(...doc.items);
    after = doc.next;
    if (!after) break;
  }
  return items;
}

/** Items → uPlot data: one x per window of the range, one series per frequent type. */
export function shape(items, window) {
  const step = STEP[window];
  const totals = new Map();
  for (const item of items) totals.set(item.type, (totals.get(item.type) ?? 0) + item.count);
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]);
  const shown = ranked.slice(0, SERIES_MAX).map(([type]) => type);
  const other = ranked.length > SERIES_MAX;
  const labels = other ? [...shown, "other types"] : shown;
  const now = Math.floor(Date.now() / 1000 / step) * step;
  const starts = items.map((i) => Math.floor(Date.parse(i.window_start) / 1000));
  const first = Math.min(now - 59 * step, ...starts);
  const xs = [];
  for (let x = first; x <= now; x += step) xs.push(x);
  const index = new Map(xs.map((x, i) => [x, i]));
  const series = labels.map(() => xs.map(() => 0));
  for (const item of items) {
    const i = index.get(Math.floor(Date.parse(item.window_start) / 1000));
    if (i === undefined) continue;
    const s = shown.indexOf(item.type);
    series[s >= 0 ? s : labels.length - 1][i] += item.count;
  }
  return { xs, labels, series, ranked };
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export async function render(ctx, root) {
  const select = h("select", { id: "window" },
    h("option", { value: "1m" }, "1 minute"), h("option", { value: "1h" }, "1 hour"));
  const chartBox = h("div", { class: "chart", id: "chart", role: "img", "aria-label": "Events per window by type" });
  const summary = h("div");
  const errors = h("div");
  let chart = null;
  let timer = null;

  function draw(data) {
    if (chart) chart.destroy();
    chart = null;
    clear(chartBox);
    if (!data.labels.length) {
      chartBox.append(notice("No events counted in this range yet."));
      return;
    }
    const axis = { stroke: css("--muted"), grid: { stroke: css("--chart-grid") }, ticks: { stroke: css("--chart-grid") } };
    chart = new uPlot({
      width: Math.max(280, chartBox.clientWidth),
      height: 300,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      axes: [axis, { ...axis, label: "events" }],
      series: [
        { label: "window" },
        ...data.labels.map((label, i) => ({ label, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: false } })),
      ],
    }, [data.xs, ...data.series], chartBox);
  }

  function table(data) {
    clear(summary);
    if (!data.ranked.length) return;
    summary.append(h("div", { class: "table-wrap" }, h("table", {},
      h("caption", {}, "Events in this range, by type"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Type"), h("th", { scope: "col" }, "Events"))),
      h("tbody", {}, data.ranked.map(([type, n]) => h("tr", {}, h("td", { class: "mono" }, type), h("td", {}, String(n))))))));
  }

  async function load() {
    clear(errors);
    try {
      const data = shape(await counts(ctx, select.value), select.value);
      draw(data);
      table(data);
    } catch (err) {
      errors.append(problem(err));
    }
  }

  select.addEventListener("change", load);
  const resize = new ResizeObserver(() => {
    if (chart) chart.setSize({ width: Math.max(280, chartBox.clientWidth), height: 300 });
  });
  root.append(
    title("Analytics"),
    h("form", { class: "panel row", "aria-label": "Chart settings", onsubmit: (e) => { e.preventDefault(); load(); } },
      h("label", { for: "window" }, "Window", select),
      h("button", { type: "submit" }, "Refresh")),
    h("p", { class: "muted small" }, "Events per tumbling window over the last 60 windows; the current window is still counting."),
    errors,
    h("section", { class: "panel", "aria-label": "Chart" }, chartBox),
    summary);
  resize.observe(chartBox);
  await load();
  timer = setInterval(load, 15_000);
  return () => {
    clearInterval(timer);
    resize.disconnect();
    if (chart) chart.destroy();
  };
}
