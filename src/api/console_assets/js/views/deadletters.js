// Dead letters: the events the projector could not apply, and their redrive once the cause is fixed.

import { tenantPath } from "../api.js";
import { append, badge, clear, h, json, notice, pagedTable, problem, title } from "../dom.js";

export async function render(ctx, root) {
  const t = ctx.tenant.id;
  const result = h("div", { "aria-live": "polite" });
  const buttons = [];
  let table;

  async function redrive(key) {
    clear(result);
    for (const b of buttons) b.disabled = true;
    try {
      const doc = await ctx.client.post(tenantPath(t, "/dead-letters/redrive"), key ? { key } : {});
      result.append(notice(
        `Applied ${doc.applied}, rejected ${doc.rejected}, left as dead letters ${doc.still_parked}.`,
        doc.keys.filter((k) => k.error).map((k) => h("div", { class: "small" }, h("code", {}, k.key), " still fails: ", k.error))));
      table.reload();
    } catch (err) {
      result.append(problem(err));
    }
    for (const b of buttons) b.disabled = false;
  }

  const all = h("button", { type: "button", class: "primary", onclick: () => redrive(null) }, "Redrive all");
  buttons.push(all);
  table = pagedTable({
    caption: "Dead letters, by record and log position",
    empty: "No dead letters.",
    fetchPage: (after) => ctx.client.get(tenantPath(t, "/dead-letters"), { limit: 25, after }),
    onPage: (doc) => { all.disabled = !doc.items.length; },
    columns: [
      { label: "Record key", class: "mono", cell: (d) => d.key },
      { label: "Event", class: "mono", cell: (d) => [d.type ?? "?", h("div", { class: "small muted" }, d.event_id ?? "unreadable")] },
      { label: "Why", class: "wrap", cell: (d) => [d.deferred ? badge("deferred") : null, d.behind ? `waits behind ${d.behind}` : d.error] },
      { label: "Data", class: "hide-narrow", cell: (d) => (d.event && d.event.data !== undefined
        ? h("details", {}, h("summary", {}, "data"), json(d.event.data)) : "—") },
      { label: "Action", cell: (d) => {
        if (d.behind) return h("span", { class: "muted small" }, "with the one ahead");
        const b = h("button", { type: "button", "aria-label": `Redrive ${d.key}`, onclick: () => redrive(d.key) }, "Redrive");
        buttons.push(b);
        return b;
      } },
    ],
  });
  append(root, [
    title("Dead letters"),
    h("p", { class: "muted" },
      "Events the projection could not apply, with the later events of the same record waiting behind them. ",
      "Fix the cause, then redrive: each record's events are applied in order, and what still fails stays here."),
    ctx.hasRole("admin") ? null : notice("Dead letters need the admin role; these credentials may be refused."),
    h("div", { class: "row" }, all, h("button", { type: "button", onclick: () => table.reload() }, "Refresh")),
    result,
    table]);
}
