// Records by collection, with filters and keyset pages; one record with its history.

import { tenantPath } from "../api.js";
import { badge, clear, h, json, link, pagedTable, problem, props, time, title } from "../dom.js";

function preview(value) {
  const text = JSON.stringify(value);
  return text.length > 140 ? `${text.slice(0, 139)}…` : text;
}

function collectionsList(ctx, current) {
  const t = ctx.tenant.id;
  const list = h("ul");
  const more = h("button", { type: "button", hidden: true }, "More collections");
  const errors = h("div");
  let next = null;
  async function load() {
    try {
      const doc = await ctx.client.get(tenantPath(t, "/collections"), { limit: 100, after: next });
      for (const c of doc.items) {
        list.append(h("li", {}, link(`/t/${t}/records/${c.name}`, c.name, { "aria-current": c.name === current ? "true" : null })));
      }
      if (!list.children.length) list.append(h("li", { class: "muted" }, "No records yet."));
      next = doc.next;
      more.hidden = !next;
    } catch (err) {
      errors.append(problem(err));
    }
  }
  more.addEventListener("click", load);
  load();
  return h("nav", { class: "panel collections", "aria-labelledby": "collections-title" },
    h("h2", { id: "collections-title" }, "Collections"), list, more, errors);
}

function filterRow(field = "", value = "") {
  const n = Math.random().toString(36).slice(2, 8);
  const row = h("div", { class: "filter" },
    h("label", { for: `f-field-${n}` }, "Field", h("input", { id: `f-field-${n}`, class: "f-field", value: field, placeholder: "status", size: 12 })),
    h("label", { for: `f-value-${n}` }, "Equals", h("input", { id: `f-value-${n}`, class: "f-value", value, placeholder: "paid", size: 14 })));
  row.append(h("button", { type: "button", "aria-label": "Remove this filter", onclick: () => row.remove() }, "Remove"));
  return row;
}

function recordList(ctx, collection) {
  const t = ctx.tenant.id;
  const filters = h("div", { class: "filters" });
  const order = h("select", { id: "order" },
    [["id", "id ↑"], ["-id", "id ↓"], ["-updated_at", "updated, newest first"], ["updated_at", "updated, oldest first"]]
      .map(([v, label]) => h("option", { value: v }, label)));
  const size = h("select", { id: "page-size" }, [10, 25, 50, 100].map((n) => h("option", { value: String(n), selected: n === 25 }, String(n))));
  const tableHolder = h("div");
  let query = {};

  function build() {
    query = { order: order.value, limit: size.value };
    for (const row of filters.querySelectorAll(".filter")) {
      const field = row.querySelector(".f-field").value.trim();
      if (field) query[`filter[${field}]`] = row.querySelector(".f-value").value;
    }
    clear(tableHolder).append(pagedTable({
      caption: `Records in ${collection}`,
      empty: "No record matches.",
      fetchPage: (after) => ctx.client.get(tenantPath(t, `/collections/${collection}/records`), { ...query, after }),
      columns: [
        { label: "Id", class: "mono", cell: (r) => link(`/t/${t}/records/${collection}/${encodeURIComponent(r.id)}`, r.id) },
        { label: "Version", cell: (r) => String(r.version) },
        { label: "Updated", class: "nowrap", cell: (r) => time(r.updated_at) },
        { label: "Data", class: "mono wrap hide-narrow", cell: (r) => preview(r.data) },
      ],
    }));
  }

  const form = h("form", { class: "panel", "aria-label": "Filter records" },
    h("div", { class: "row" },
      h("label", { for: "order" }, "Order", order),
      h("label", { for: "page-size" }, "Per page", size)),
    h("p", { class: "muted small" }, "Filters match a top-level field of the record's data exactly."),
    filters,
    h("div", { class: "row" },
      h("button", { type: "button", onclick: () => filters.append(filterRow()) }, "Add filter"),
      h("button", { type: "submit", class: "primary" }, "Apply")));
  form.addEventListener("submit", (event) => { event.preventDefault(); build(); });
  build();
  return h("div", {}, form, tableHolder);
}

function recordDetail(ctx, collection, id) {
  const t = ctx.tenant.id;
  const holder = h("section", { class: "panel", "aria-label": "Record" }, h("p", { class: "muted" }, "Loading…"));
  ctx.client.get(tenantPath(t, `/collections/${collection}/records/${encodeURIComponent(id)}`))
    .then((r) => clear(holder).append(
      props([["Version", String(r.version)], ["Created", time(r.created_at)], ["Updated", time(r.updated_at)]]),
      h("h2", {}, "Data"), json(r.data)))
    .catch((err) => clear(holder).append(problem(err)));
  const history = pagedTable({
    caption: "History, newest first",
    empty: "No events for this record.",
    fetchPage: (after) => ctx.client.get(tenantPath(t, "/events"), { subject: `${collection}/${id}`, order: "-seq", limit: 20, after }),
    columns: [
      { label: "Time", class: "nowrap", cell: (e) => time(e.time) },
      { label: "Type", class: "mono", cell: (e) => e.type },
      { label: "Status", cell: (e) => [badge(e.status), e.reason ? h("div", { class: "small muted" }, e.reason) : null] },
      { label: "Actor", class: "mono", cell: (e) => e.actor ?? "—" },
      { label: "Data", class: "mono wrap", cell: (e) => (e.data === undefined ? "—" : preview(e.data)) },
      { label: "Event id", class: "mono hide-narrow", cell: (e) => e.id },
    ],
  });
  return h("div", {},
    h("p", {}, link(`/t/${t}/records/${collection}`, `← All of ${collection}`)),
    holder, h("h2", {}, "History"), history);
}

export async function render(ctx, root, [collection, id]) {
  const heading = id ? `Record ${collection}/${id}` : collection ? `Records: ${collection}` : "Records";
  const body = id ? recordDetail(ctx, collection, id)
    : collection ? recordList(ctx, collection)
      : h("p", { class: "muted" }, "Choose a collection.");
  root.append(title(heading), h("div", { class: "split" }, collectionsList(ctx, collection), h("div", {}, body)));
}
