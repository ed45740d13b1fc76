// Overview: the tenant's most recent events, newest first, growing live from the SSE stream.

import { tenantPath } from "../api.js";
import { badge, h, link, problem, props, time, title } from "../dom.js";

const MAX_ROWS = 500;

function subjectCell(tenant, subject) {
  if (!subject) return h("span", { class: "muted" }, "—");
  const [collection, id] = subject.split("/", 2);
  if (id && /^[a-z][a-z0-9_]{0,62}$/.test(collection)) {
    return link(`/t/${tenant}/records/${collection}/${encodeURIComponent(id)}`, subject, { class: "mono" });
  }
  return h("span", { class: "mono" }, subject);
}

export async function render(ctx, root) {
  const tenant = ctx.tenant;
  const rows = new Map(); // event id → its row
  const tbody = h("tbody");
  const errors = h("div");
  const more = h("button", { type: "button", hidden: true }, "Load older events");
  const count = h("span", { class: "muted small", "aria-live": "polite" });
  let next = null;
  let ready = false;
  const early = [];

  function row(event, fresh) {
    return h("tr", { class: fresh ? "new" : null, "data-event-id": event.id },
      h("td", { class: "nowrap" }, time(event.time)),
      h("td", { class: "mono" }, event.type),
      h("td", {}, subjectCell(tenant.id, event.subject)),
      h("td", {}, badge(event.status ?? "applied"), event.reason ? h("div", { class: "small muted" }, event.reason) : null),
      h("td", { class: "mono", "data-col": "actor" }, event.actor ?? "—"),
      h("td", { class: "mono hide-narrow" }, event.id));
  }

  function updateCount() {
    count.textContent = `${rows.size} event${rows.size === 1 ? "" : "s"} shown`;
  }

  function live(event) {
    const existing = rows.get(event.id);
    const fresh = row(event, true);
    if (existing) {
      existing.replaceWith(fresh);
    } else {
      tbody.prepend(fresh);
      const empty = tbody.querySelector("tr.empty-row");
      if (empty) empty.remove();
    }
    rows.set(event.id, fresh);
    while (rows.size > MAX_ROWS) {
      const last = tbody.lastElementChild;
      rows.delete(last.dataset.eventId);
      last.remove();
    }
    updateCount();
  }

  function older(items) {
    for (const event of items) {
      if (rows.has(event.id)) continue;
      const tr = row(event, false);
      rows.set(event.id, tr);
      tbody.append(tr);
    }
    updateCount();
  }

  // Subscribed before the first page is read: an event applied in between is not lost.
  const unsubscribe = ctx.live.subscribe(({ event }) => (ready ? live(event) : early.push(event)));

  async function loadPage() {
    errors.replaceChildren();
    more.disabled = true;
    try {
      const doc = await ctx.client.get(tenantPath(tenant.id, "/events"), { order: "-seq", limit: 50, after: next });
      older(doc.items);
      next = doc.next;
    } catch (err) {
      errors.append(problem(err));
    }
    more.hidden = !next;
    more.disabled = false;
  }
  more.addEventListener("click", loadPage);

  root.append(
    title("Overview"),
    h("section", { class: "panel", "aria-label": "Tenant" },
      props([
        ["Tenant", `${tenant.name} (${tenant.id})`],
        ["Status", tenant.reason ? [badge(tenant.status), " ", tenant.reason] : badge(tenant.status)],
        ["Created", time(tenant.created_at)],
        ["Rate limit", tenant.limits ? `${tenant.limits.requests_per_second}/s, burst ${tenant.limits.burst}` : "—"],
      ])),
    h("h2", { id: "recent" }, "Recent events ", count),
    h("p", { class: "muted small" }, "Newest first. Applied events appear here as they happen."),
    h("div", { class: "table-wrap" },
      h("table", { "aria-labelledby": "recent", id: "events" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Time"), h("th", { scope: "col" }, "Type"),
          h("th", { scope: "col" }, "Subject"), h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col" }, "Actor"),
          h("th", { scope: "col", class: "hide-narrow" }, "Event id"))),
        tbody)),
    h("div", { class: "pager" }, more),
    errors);
  await loadPage();
  if (!rows.size) {
    tbody.append(h("tr", { class: "empty-row" }, h("td", { colspan: 6, class: "empty" }, "No events yet.")));
  }
  ready = true;
  for (const event of early.splice(0)) live(event);
  return unsubscribe;
}
