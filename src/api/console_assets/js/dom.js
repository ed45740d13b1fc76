// DOM helpers: elements built with text nodes only (nothing the API sends is parsed as HTML).

/** `h("a", {href: "#"}, "text", child)`: an element; `on*` attributes become listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "value" || name === "checked" || name === "selected") {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

const DAY = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "2-digit", day: "2-digit" });
const CLOCK = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});

/** An ISO timestamp as a `<time>` in the reader's time zone (the date left out on phones). */
export function time(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return h("time", { datetime: iso, title: iso },
    h("span", { class: "hide-narrow" }, `${DAY.format(date)} `), CLOCK.format(date));
}

export function badge(text) {
  return h("span", { class: `badge ${String(text).replace(/[^a-z_]/gi, "")}` }, text);
}

export function json(value) {
  return h("pre", { class: "json", tabindex: "0" }, JSON.stringify(value, null, 2));
}

/** A `<dl>` of label → value pairs. */
export function props(pairs) {
  return h("dl", { class: "props" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/** The problem an ApiError carries: its title and detail (and field errors), as an alert. */
export function problem(err) {
  if (err && err.title !== undefined) {
    return h("div", { class: "problem", role: "alert" },
      h("strong", {}, err.title), " ", h("span", {}, err.detail),
      err.errors && err.errors.length
        ? h("ul", {}, err.errors.map((e) => h("li", {}, h("code", {}, e.path), " ", e.message)))
        : null);
  }
  return h("div", { class: "problem", role: "alert" }, h("strong", {}, "Error"), " ", String(err));
}

export function notice(...children) {
  return h("div", { class: "notice", role: "status" }, ...children);
}

/** A heading that takes the focus when a view opens (keyboard and screen reader users). */
export function title(text) {
  return h("h1", { tabindex: "-1", id: "view-title" }, text);
}

/**
 * A table fed page by page from a CONTRACT list (`{items, next}`): First/Previous/Next
 * buttons walk the cursors (a stack of the `after` values seen). `fetchPage(after)`
 * returns the page; `columns` are `{label, cell(item), class?}`.
 */
export function pagedTable({ caption, columns, fetchPage, empty = "Nothing here yet.", onPage }) {
  const status = h("span", { class: "muted small", "aria-live": "polite" });
  const body = h("tbody");
  const errors = h("div");
  const first = h("button", { type: "button" }, "First page");
  const prev = h("button", { type: "button" }, "Previous page");
  const next = h("button", { type: "button" }, "Next page");
  const table = h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
    body);
  const root = h("div", { class: "paged" },
    h("div", { class: "table-wrap" }, table),
    h("div", { class: "pager" }, first, prev, next, status),
    errors);
  const cursors = [null]; // cursors[i]: the `after` of page i
  let page = 0;
  let nextCursor = null;

  async function load() {
    clear(errors);
    status.textContent = "Loading…";
    for (const b of [first, prev, next]) b.disabled = true;
    try {
      const doc = await fetchPage(cursors[page]);
      nextCursor = doc.next;
      clear(body);
      for (const item of doc.items) {
        body.append(h("tr", {}, columns.map((c) => h("td", { class: c.class }, c.cell(item)))));
      }
      if (!doc.items.length) {
        body.append(h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty)));
      }
      status.textContent = `Page ${page + 1}, ${doc.items.length} item${doc.items.length === 1 ? "" : "s"}`;
      if (onPage) onPage(doc);
    } catch (err) {
      status.textContent = "";
      errors.append(problem(err));
    }
    first.disabled = prev.disabled = page === 0;
    next.disabled = !nextCursor;
  }

  first.addEventListener("click", () => { page = 0; cursors.length = 1; load(); });
  prev.addEventListener("click", () => { if (page > 0) { page -= 1; load(); } });
  next.addEventListener("click", () => {
    if (!nextCursor) return;
    page += 1;
    cursors[page] = nextCursor;
    cursors.length = page + 1;
    load();
  });
  root.reload = () => { page = 0; cursors.length = 1; return load(); };
  root.refresh = load;
  load();
  return root;
}

/** A link inside the console (hash routes). */
export function link(hash, text, attrs = {}) {
  return h("a", { href: `#${hash}`, ...attrs }, text);
}
