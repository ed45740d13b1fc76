// The console's shell: sign-in, the tenant in view, its live stream, navigation and routing.
// Routes live in the URL fragment (`#/t/<tenant>/records`), which never reaches the server.

import { ApiError, Client, LiveStream, clearCredential, loadCredential, saveCredential, tenantPath } from "./api.js";
import { append, badge, clear, h, problem, title } from "./dom.js";
import * as overview from "./views/overview.js";
import * as records from "./views/records.js";
import * as webhooks from "./views/webhooks.js";
import * as deadLetters from "./views/deadletters.js";
import * as integrations from "./views/integrations.js";
import * as analytics from "./views/analytics.js";
import * as workflows from "./views/workflows.js";
import * as platform from "./views/platform.js";

const TENANT_VIEWS = [
  ["overview", "Overview", overview],
  ["records", "Records", records],
  ["webhooks", "Webhooks", webhooks],
  ["dead-letters", "Dead letters", deadLetters],
  ["integrations", "Integrations", integrations],
  ["analytics", "Analytics", analytics],
  ["workflows", "Workflows", workflows],
];
const PLATFORM_VIEWS = [
  ["tenants", "Tenants", platform.tenants],
  ["processors", "Processors & health", platform.processors],
];
const RANK = { reader: 0, writer: 1, admin: 2, "platform-admin": 3 };

const state = {
  client: null,
  me: null,
  tenant: null, // {id, name, status, …} of the tenant in view
  live: null,
  badgeOff: null,
  cleanup: null,
  renderSeq: 0,
};

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const context = document.getElementById("context");
const who = document.getElementById("who");

export function hasRole(me, role) {
  return me.roles.some((r) => (RANK[r] ?? -1) >= RANK[role]);
}

function go(hash) {
  if (window.location.hash === `#${hash}`) route();
  else window.location.hash = hash;
}

function stopLive() {
  if (state.live) state.live.stop();
  state.live = null;
}

function signOut() {
  clearCredential();
  stopLive();
  state.client = null;
  state.me = null;
  state.tenant = null;
  history.replaceState(null, "", window.location.pathname + window.location.search);
  renderSignIn();
}

async function signIn(credential) {
  const client = new Client(credential.trim());
  const me = await client.get("/v1/me");
  saveCredential(client.credential);
  state.client = client;
  state.me = me;
  renderWho();
}

function renderWho() {
  clear(who);
  if (!state.me) return;
  const roles = state.me.platform_admin ? "platform admin" : state.me.roles.join(", ");
  who.append(
    h("span", { class: "small" }, `${state.me.subject} (${roles})`),
    h("button", { type: "button", onclick: signOut }, "Sign out"),
  );
}

function renderSignIn(error = null) {
  if (state.cleanup) state.cleanup();
  state.cleanup = null;
  nav.hidden = true;
  clear(context);
  clear(who);
  const input = h("textarea", {
    id: "credential", name: "credential", required: true, autocomplete: "off",
    spellcheck: "false", "aria-describedby": "credential-help",
  });
  const errors = h("div");
  if (error) errors.append(problem(error));
  const form = h("form", { class: "panel signin", "aria-labelledby": "view-title" },
    title("Sign in"),
    h("label", { for: "credential" }, "Bearer token or API key"),
    input,
    h("p", { id: "credential-help", class: "muted small" },
      "Paste a JWT (eventfold token …) or an API key (efk_…). It is kept in this tab only, ",
      "and sent to this server alone. Links may carry a token as ", h("code", {}, "#token=…"), "."),
    errors,
    h("button", { type: "submit", class: "primary" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(errors);
    try {
      await signIn(input.value);
      go(defaultRoute());
    } catch (err) {
      errors.append(problem(err));
    }
  });
  clear(main).append(form);
  input.focus();
}

function defaultRoute() {
  return state.me.platform_admin ? "/platform/tenants" : `/t/${state.me.tenant}/overview`;
}

function renderNav(section, view) {
  clear(nav);
  nav.hidden = false;
  const item = (hash, label, current) =>
    h("li", {}, h("a", { href: `#${hash}`, "aria-current": current ? "page" : null }, label));
  if (state.tenant) {
    const t = state.tenant.id;
    nav.append(h("div", { class: "group" },
      h("h2", { id: "nav-tenant" }, "Tenant"),
      h("ul", { "aria-labelledby": "nav-tenant" },
        TENANT_VIEWS.map(([name, label]) => item(`/t/${t}/${name}`, label, section === "t" && view === name)))));
  }
  if (state.me.platform_admin) {
    nav.append(h("div", { class: "group" },
      h("h2", { id: "nav-platform" }, "Platform"),
      h("ul", { "aria-labelledby": "nav-platform" },
        PLATFORM_VIEWS.map(([name, label]) => item(`/platform/${name}`, label, section === "platform" && view === name)))));
  }
}

function renderContext() {
  if (state.badgeOff) state.badgeOff();
  state.badgeOff = null;
  clear(context);
  if (!state.tenant) {
    context.append("Platform");
    return;
  }
  append(context, [
    h("span", {}, "Tenant "), h("strong", {}, state.tenant.name),
    h("span", { class: "muted" }, ` (${state.tenant.id}) `),
    state.tenant.status !== "active" ? [badge(state.tenant.status), " "] : null,
    liveBadge(),
    state.me.platform_admin ? [" ", h("a", { href: "#/platform/tenants" }, "Change tenant")] : null,
  ]);
}

function liveBadge() {
  const el = h("span", { id: "live-state", role: "status", "aria-live": "polite" });
  state.badgeOff = state.live.onState((s, err) => {
    clear(el).append(badge(s), err ? ` ${err.title}: ${err.detail}` : "");
  });
  return el;
}

async function openTenant(tenantId) {
  if (state.tenant && state.tenant.id === tenantId) return;
  stopLive();
  state.tenant = null;
  state.tenant = await state.client.get(tenantPath(tenantId));
  state.live = new LiveStream(state.client, tenantId);
  state.live.start();
}

function parseRoute() {
  const parts = window.location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  return parts;
}

async function route() {
  const seq = ++state.renderSeq;
  if (state.cleanup) state.cleanup();
  state.cleanup = null;
  if (!state.me) return renderSignIn();
  const parts = parseRoute();
  if (!parts.length) return go(defaultRoute());
  const [section, ...rest] = parts;
  const container = h("div", { class: "view" });
  try {
    if (section === "t" && rest.length >= 1) {
      const [tenantId, view = "overview", ...args] = rest;
      await openTenant(tenantId);
      const found = TENANT_VIEWS.find(([name]) => name === view);
      if (seq !== state.renderSeq) return;
      renderNav("t", view);
      renderContext();
      clear(main).append(container);
      if (!found) throw new ApiError(404, { title: "Not Found", detail: `the console has no view ${view}` });
      state.cleanup = await found[2].render(ctx(), container, args) ?? null;
    } else if (section === "platform" && state.me.platform_admin) {
      const [view = "tenants"] = rest;
      const found = PLATFORM_VIEWS.find(([name]) => name === view);
      stopLive();
      state.tenant = null;
      renderNav("platform", view);
      renderContext();
      clear(main).append(container);
      if (!found) throw new ApiError(404, { title: "Not Found", detail: `the console has no view ${view}` });
      state.cleanup = await found[2](ctx(), container) ?? null;
    } else {
      return go(defaultRoute());
    }
    const heading = document.getElementById("view-title");
    if (heading && seq === state.renderSeq) heading.focus({ preventScroll: true });
  } catch (err) {
    if (seq !== state.renderSeq) return;
    renderNav(section, null);
    if (err instanceof ApiError && err.status === 401) return renderSignIn(err);
    clear(main).append(title("Cannot show this"), problem(err));
  }
}

function ctx() {
  return {
    client: state.client,
    me: state.me,
    tenant: state.tenant,
    live: state.live,
    go,
    hasRole: (role) => hasRole(state.me, role),
  };
}

async function start() {
  let credential = loadCredential();
  const hash = window.location.hash;
  if (hash.startsWith("#token=")) {
    credential = decodeURIComponent(hash.slice("#token=".length));
    // The token leaves the address bar (and the history entry) before anything else runs.
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  window.addEventListener("hashchange", route);
  if (!credential) return renderSignIn();
  try {
    await signIn(credential);
  } catch (err) {
    clearCredential();
    return renderSignIn(err);
  }
  route();
}

start();
