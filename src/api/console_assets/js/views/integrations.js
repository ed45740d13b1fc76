// Integrations: each one's sync state, and a sync started now.

import { tenantPath } from "../api.js";
import { append, badge, clear, h, notice, pagedTable, problem, time, title } from "../dom.js";

export async function render(ctx, root) {
  const t = ctx.tenant.id;
  const result = h("div", { "aria-live": "polite" });
  const table = pagedTable({
    caption: "Integrations",
    empty: "No integrations.",
    fetchPage: (after) => ctx.client.get(tenantPath(t, "/integrations"), { limit: 25, after }),
    columns: [
      { label: "Id", class: "mono", cell: (i) => i.id },
      { label: "Kind", cell: (i) => i.kind },
      { label: "State", cell: (i) => badge(i.state) },
      { label: "Collection", class: "mono", cell: (i) => i.config.collection ?? "—" },
      { label: "Items synced", cell: (i) => String(i.items_synced) },
      { label: "Last run", class: "nowrap", cell: (i) => time(i.last_run_at) },
      { label: "Last error", class: "wrap hide-narrow", cell: (i) => i.last_error ?? "—" },
      { label: "Action", cell: (i) => h("button", {
        type: "button", "aria-label": `Sync ${i.id} now`,
        onclick: async () => {
          clear(result);
          try {
            await ctx.client.post(tenantPath(t, `/integrations/${i.id}/sync`), {});
            result.append(notice(`Sync of ${i.id} requested.`));
          } catch (err) {
            result.append(problem(err));
          }
        },
      }, "Sync now") },
    ],
  });
  append(root, [
    title("Integrations"),
    ctx.hasRole("admin") ? null : notice("Integrations need the admin role; these credentials may be refused."),
    h("div", { class: "row" }, h("button", { type: "button", onclick: () => table.refresh() }, "Refresh")),
    result, table]);
}
