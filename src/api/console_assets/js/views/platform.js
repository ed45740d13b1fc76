// Platform admins: every tenant, each stream processor's lag, and this process's health.

import { badge, clear, h, link, pagedTable, problem, time, title } from "../dom.js";

export async function tenants(ctx, root) {
  root.append(
    title("Tenants"),
    h("p", { class: "muted" }, "Choose a tenant to open it."),
    pagedTable({
      caption: "Tenants, by id",
      empty: "No tenants yet.",
      fetchPage: (after) => ctx.client.get("/v1/tenants", { limit: 25, after }),
      columns: [
        { label: "Id", class: "mono", cell: (t) => link(`/t/${t.id}/overview`, t.id) },
        { label: "Name", cell: (t) => t.name },
        { label: "Status", cell: (t) => badge(t.status) },
        { label: "Created", class: "nowrap hide-narrow", cell: (t) => time(t.created_at) },
      ],
    }));
}

async function health() {
  // Health is public (no credentials) and answers 503 with its body when down.
  const resp = await fetch("/health/ready", { cache: "no-store", credentials: "omit", headers: { Accept: "application/json" } });
  return resp.json();
}

export async function processors(ctx, root) {
  const lag = h("div");
  const ready = h("div");
  const updated = h("span", { class: "muted small", "aria-live": "polite" });

  async function load() {
    try {
      const doc = await ctx.client.get("/v1/processors");
      clear(lag).append(h("div", { class: "table-wrap" }, h("table", {},
        h("caption", {}, "Stream processors"),
        h("thead", {}, h("tr", {}, ["Processor", "Position kept in", "Lag (events)", "Backlog", "Partitions (position / end)"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, doc.items.map((p) => h("tr", { "data-processor": p.name },
          h("td", { class: "mono" }, p.name),
          h("td", {}, p.store ?? "—", p.group ? h("div", { class: "small muted mono" }, p.group) : null),
          h("td", {}, p.lag === null ? "—" : [badge(p.lag === 0 ? "ok" : "behind"), ` ${p.lag}`]),
          h("td", {}, p.backlog === null ? "—" : String(p.backlog)),
          h("td", { class: "mono small wrap hide-narrow" }, p.partitions.map((q) => `${q.partition}: ${q.position ?? "—"} / ${q.end}`).join(" · ") || "—")))))));
    } catch (err) {
      clear(lag).append(problem(err));
    }
    try {
      const doc = await health();
      clear(ready).append(h("div", { class: "table-wrap" }, h("table", {},
        h("caption", {}, "Readiness of this process: ", badge(doc.status)),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Check"), h("th", { scope: "col" }, "State"), h("th", { scope: "col" }, "Error"))),
        h("tbody", {}, Object.entries(doc.checks).map(([name, check]) => h("tr", {},
          h("td", { class: "mono" }, name), h("td", {}, badge(check.status)), h("td", { class: "wrap" }, check.error ?? "—")))))));
    } catch (err) {
      clear(ready).append(problem(err));
    }
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  root.append(title("Processors & health"), updated, h("h2", {}, "Lag"), lag, h("h2", {}, "Health"), ready);
  await load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}
