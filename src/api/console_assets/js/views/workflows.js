// Workflows and their runs, with approve, reject and cancel (CONTRACT.md "Workflows").
// A server without the workflow routes answers 404 on GET …/workflows: the view says so.

import { ApiError, tenantPath } from "../api.js";
import { badge, clear, h, json, link, notice, pagedTable, problem, props, time, title } from "../dom.js";

const UNFINISHED = new Set(["running", "waiting"]);

/** False when this server has no workflow routes (GET …/workflows is a 404). */
async function available(ctx) {
  try {
    await ctx.client.get(tenantPath(ctx.tenant.id, "/workflows"), { limit: 1 });
    return true;
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return false;
    throw err;
  }
}

/** Calls `fn` at most every `ms` while workflow events arrive on the live stream. */
function onWorkflowEvents(ctx, fn, ms = 300) {
  let timer = null;
  return ctx.live.subscribe(({ type }) => {
    if (!type.startsWith("workflow.") || timer) return;
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  });
}

function workflowList(ctx) {
  const t = ctx.tenant.id;
  return pagedTable({
    caption: "Workflows",
    empty: "No workflows.",
    fetchPage: (after) => ctx.client.get(tenantPath(t, "/workflows"), { limit: 25, after }),
    columns: [
      { label: "Id", class: "mono", cell: (w) => link(`/t/${t}/workflows/${encodeURIComponent(w.id)}`, w.id) },
      { label: "Name", cell: (w) => w.name ?? "—" },
      { label: "Enabled", cell: (w) => badge(w.enabled === false ? "paused" : "ok") },
      { label: "Version", cell: (w) => String(w.version ?? "—") },
      { label: "Trigger", class: "mono wrap hide-narrow", cell: (w) => (w.trigger ? `${(w.trigger.types ?? []).join(", ")} in ${w.trigger.collection ?? "—"}` : "—") },
    ],
  });
}

function workflow(ctx, id) {
  const t = ctx.tenant.id;
  const definition = h("section", { class: "panel", "aria-label": "Definition" }, h("p", { class: "muted" }, "Loading…"));
  ctx.client.get(tenantPath(t, `/workflows/${encodeURIComponent(id)}`))
    .then((w) => clear(definition).append(
      props([
        ["Name", w.name ?? "—"],
        ["Enabled", badge(w.enabled === false ? "paused" : "ok")],
        ["Version", String(w.version ?? "—")],
        ["Steps", (w.steps ?? []).map((s) => `${s.id} (${s.kind})`).join(" → ") || "—"],
      ]),
      h("details", {}, h("summary", {}, "Definition"), json(w))))
    .catch((err) => clear(definition).append(problem(err)));
  const runs = pagedTable({
    caption: "Runs, newest first",
    empty: "No runs yet.",
    fetchPage: (after) => ctx.client.get(tenantPath(t, `/workflows/${encodeURIComponent(id)}/runs`), { limit: 25, after }),
    columns: [
      { label: "Run", class: "mono", cell: (r) => link(`/t/${t}/workflows/${encodeURIComponent(id)}/runs/${encodeURIComponent(r.id)}`, r.id) },
      { label: "Status", cell: (r) => badge(r.status) },
      { label: "Started", class: "nowrap", cell: (r) => time(r.started_at) },
      { label: "Finished", class: "nowrap hide-narrow", cell: (r) => time(r.finished_at) },
    ],
  });
  const off = onWorkflowEvents(ctx, () => runs.refresh());
  const el = h("div", {}, h("p", {}, link(`/t/${t}/workflows`, "← All workflows")), definition, runs);
  return { el, cleanup: off };
}

function run(ctx, workflowId, runId) {
  const t = ctx.tenant.id;
  const base = tenantPath(t, `/runs/${encodeURIComponent(runId)}`);
  const holder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const result = h("div", { "aria-live": "polite" });
  let token = null; // the last action's consistency token: the next read reflects it

  async function act(path, body, done) {
    clear(result);
    for (const b of holder.querySelectorAll("button")) b.disabled = true;
    try {
      const doc = await ctx.client.post(`${base}${path}`, body);
      token = doc && doc.consistency_token ? doc.consistency_token : null;
      result.append(notice(done));
    } catch (err) {
      result.append(problem(err));
    }
    await load();
  }

  function stepActions(r, step) {
    if (step.kind !== "approval" || step.status !== "waiting") return "—";
    const n = `c-${step.id}`;
    const comment = h("input", { id: n, placeholder: "optional", size: 14 });
    const sid = encodeURIComponent(step.id);
    return h("div", { class: "row" },
      h("label", { for: n }, `Comment on ${step.id}`, comment),
      h("button", { type: "button", class: "primary", "aria-label": `Approve step ${step.id}`,
        onclick: () => act(`/steps/${sid}/approve`, comment.value ? { comment: comment.value } : {}, `Step ${step.id} approved.`) }, "Approve"),
      h("button", { type: "button", class: "danger", "aria-label": `Reject step ${step.id}`,
        onclick: () => act(`/steps/${sid}/reject`, comment.value ? { comment: comment.value } : {}, `Step ${step.id} rejected.`) }, "Reject"));
  }

  async function load() {
    try {
      const r = await ctx.client.get(base, {}, { headers: token ? { "X-Consistency-Token": token } : {} });
      clear(holder).append(
        h("section", { class: "panel", "aria-label": "Run" },
          props([
            ["Workflow", `${r.workflow} (version ${r.workflow_version})`],
            ["Status", badge(r.status)],
            ["Trigger event", h("span", { class: "mono" }, r.trigger_event ?? "—")],
            ["Started", time(r.started_at)],
            ["Finished", time(r.finished_at)],
          ]),
          UNFINISHED.has(r.status)
            ? h("div", { class: "row" }, h("button", { type: "button", class: "danger", onclick: () => act("/cancel", {}, "Run cancelled.") }, "Cancel run"))
            : null),
        h("div", { class: "table-wrap" }, h("table", {},
          h("caption", {}, "Steps"),
          h("thead", {}, h("tr", {}, ["Step", "Kind", "Status", "Attempts", "Output or error", "Action"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, (r.steps ?? []).map((s) => h("tr", { "data-step": s.id },
            h("td", { class: "mono" }, s.id),
            h("td", {}, s.kind),
            h("td", {}, badge(s.status)),
            h("td", {}, String(s.attempts ?? 0)),
            h("td", { class: "mono wrap" }, s.error ?? (s.output !== null && s.output !== undefined ? JSON.stringify(s.output) : "—")),
            h("td", {}, stepActions(r, s))))))));
    } catch (err) {
      clear(holder).append(problem(err));
    }
  }

  load();
  const off = onWorkflowEvents(ctx, load);
  const el = h("div", {},
    h("p", {}, link(`/t/${t}/workflows/${encodeURIComponent(workflowId)}`, `← Runs of ${workflowId}`)),
    result, holder);
  return { el, cleanup: off };
}

export async function render(ctx, root, [id, sub, runId]) {
  root.append(title(runId ? `Run ${runId}` : id ? `Workflow ${id}` : "Workflows"));
  if (!(await available(ctx))) {
    root.append(notice("Workflows are not available on this server."));
    return null;
  }
  if (id && sub === "runs" && runId) {
    const view = run(ctx, id, runId);
    root.append(view.el);
    return view.cleanup;
  }
  if (id) {
    const view = workflow(ctx, id);
    root.append(view.el);
    return view.cleanup;
  }
  root.append(workflowList(ctx));
  return null;
}
