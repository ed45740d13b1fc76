// Webhooks: the endpoints, one endpoint's delivery log, and the redrive of its exhausted deliveries.

import { tenantPath } from "../api.js";
import { badge, clear, h, link, notice, pagedTable, problem, time, title } from "../dom.js";

function localInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function endpointList(ctx) {
  const t = ctx.tenant.id;
  return pagedTable({
    caption: "Endpoints",
    empty: "No webhook endpoints.",
    fetchPage: (after) => ctx.client.get(tenantPath(t, "/webhooks"), { limit: 25, after }),
    columns: [
      { label: "Id", class: "mono", cell: (w) => link(`/t/${t}/webhooks/${w.id}`, w.id) },
      { label: "URL", class: "mono wrap", cell: (w) => w.url },
      { label: "Types", class: "mono wrap", cell: (w) => w.types.join(", ") },
      { label: "State", cell: (w) => (w.disabled_at ? [badge("disabled"), h("div", { class: "small muted" }, w.disabled_reason ?? "")] : badge("ok")) },
      { label: "Created", class: "nowrap hide-narrow", cell: (w) => time(w.created_at) },
    ],
  });
}

function endpoint(ctx, id) {
  const t = ctx.tenant.id;
  const deliveries = pagedTable({
    caption: "Delivery attempts, newest first",
    empty: "No delivery attempts yet.",
    fetchPage: (after) => ctx.client.get(tenantPath(t, `/webhooks/${id}/deliveries`), { limit: 25, after }),
    columns: [
      { label: "Time", class: "nowrap", cell: (a) => time(a.at) },
      { label: "Event id", class: "mono", cell: (a) => a.event_id },
      { label: "Attempt", cell: (a) => String(a.attempt) },
      { label: "Answer", cell: (a) => (a.status_code !== null
        ? [badge(a.status_code >= 200 && a.status_code < 300 ? "ok" : "failed"), ` HTTP ${a.status_code}`]
        : h("span", { class: "small" }, a.error ?? "—")) },
      { label: "Duration", class: "hide-narrow", cell: (a) => `${Math.round(a.duration_ms)} ms` },
    ],
  });
  const since = h("input", { id: "redrive-since", type: "datetime-local", required: true, value: localInput(new Date(Date.now() - 24 * 3600 * 1000)) });
  const result = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "submit", class: "primary" }, "Redrive exhausted deliveries");
  const form = h("form", { class: "panel", "aria-labelledby": "redrive-title" },
    h("h2", { id: "redrive-title" }, "Redrive"),
    h("p", { class: "muted small" }, "Deliveries that exhausted their retries since this time are scheduled again."),
    h("div", { class: "row" }, h("label", { for: "redrive-since" }, "Exhausted since", since), button),
    result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(result);
    button.disabled = true;
    try {
      const doc = await ctx.client.post(tenantPath(t, `/webhooks/${id}/redrive`), { since: new Date(since.value).toISOString() });
      result.append(notice(`${doc.redriven} deliver${doc.redriven === 1 ? "y" : "ies"} scheduled again.`));
      deliveries.refresh();
    } catch (err) {
      result.append(problem(err));
    }
    button.disabled = false;
  });
  return h("div", {},
    h("p", {}, link(`/t/${t}/webhooks`, "← All endpoints")),
    form,
    h("div", { class: "row" }, h("button", { type: "button", onclick: () => deliveries.reload() }, "Refresh")),
    deliveries);
}

export async function render(ctx, root, [id]) {
  root.append(title(id ? `Webhook ${id}` : "Webhooks"));
  if (!ctx.hasRole("admin")) {
    root.append(notice("Webhooks need the admin role; these credentials may be refused."));
  }
  root.append(id ? endpoint(ctx, id) : endpointList(ctx));
}
