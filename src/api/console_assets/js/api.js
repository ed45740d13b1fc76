// The console's only way out: this origin's public HTTP API and its SSE stream.
// Credentials live in this tab's sessionStorage and in request headers, never in a URL.

const STORE = "eventfold.console.credential";

/** A failed call, carrying the RFC 9457 problem the API answered (title, detail, errors). */
export class ApiError extends Error {
  constructor(status, problem) {
    super(`${problem.title}: ${problem.detail}`);
    this.status = status;
    this.title = problem.title;
    this.detail = problem.detail;
    this.errors = Array.isArray(problem.errors) ? problem.errors : [];
  }
}

export function loadCredential() {
  return sessionStorage.getItem(STORE);
}

export function saveCredential(credential) {
  sessionStorage.setItem(STORE, credential);
}

export function clearCredential() {
  sessionStorage.removeItem(STORE);
}

/** API keys read `efk_<id>_<secret>`; anything else is sent as a bearer token. */
export function authHeaders(credential) {
  return credential.startsWith("efk_")
    ? { "X-API-Key": credential }
    : { Authorization: `Bearer ${credential}` };
}

async function problemOf(resp) {
  const text = await resp.text();
  try {
    const doc = JSON.parse(text);
    if (doc && typeof doc.title === "string") {
      return { title: doc.title, detail: String(doc.detail ?? ""), errors: doc.errors };
    }
  } catch {
    // not a problem document: described from the status below
  }
  return { title: resp.statusText || "Error", detail: `the server answered HTTP ${resp.status}` };
}

export class Client {
  constructor(credential) {
    this.credential = credential;
  }

  headers(extra = {}) {
    return { Accept: "application/json", ...authHeaders(this.credential), ...extra };
  }

  /** One call; resolves to the parsed JSON body, rejects with an ApiError. */
  async request(method, path, { query, body, headers = {}, signal } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
    }
    const init = { method, signal, cache: "no-store", credentials: "omit", headers: this.headers(headers) };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, { title: "Network error", detail: "the server did not answer" });
    }
    if (!resp.ok) throw new ApiError(resp.status, await problemOf(resp));
    if (resp.status === 204) return null;
    return resp.json();
  }

  get(path, query, options = {}) {
    return this.request("GET", path, { query, ...options });
  }

  post(path, body, options = {}) {
    return this.request("POST", path, { body, ...options });
  }
}

/** `/v1/tenants/{t}` + rest, with the tenant id escaped. */
export function tenantPath(tenant, rest = "") {
  return `/v1/tenants/${encodeURIComponent(tenant)}${rest}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The tenant's applied events, live: `GET …/stream` read with fetch (EventSource cannot
 * send the credentials header), parsed as Server-Sent Events, resumed with Last-Event-ID
 * after a dropped connection. Listeners get `{id, type, event}`; state listeners get
 * "connecting", "live", "reconnecting" or "error" (with the ApiError).
 */
export class LiveStream {
  constructor(client, tenant) {
    this.client = client;
    this.tenant = tenant;
    this.lastId = null;
    this.state = "connecting";
    this.stopped = true;
    this.listeners = new Set();
    this.stateListeners = new Set();
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  onState(listener) {
    this.stateListeners.add(listener);
    listener(this.state, this.error);
    return () => this.stateListeners.delete(listener);
  }

  setState(state, error = null) {
    this.state = state;
    this.error = error;
    for (const listener of this.stateListeners) listener(state, error);
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.run();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    let delay = 500;
    while (!this.stopped) {
      this.controller = new AbortController();
      try {
        const headers = this.client.headers({ Accept: "text/event-stream" });
        if (this.lastId) headers["Last-Event-ID"] = this.lastId;
        const resp = await fetch(tenantPath(this.tenant, "/stream"), {
          headers, signal: this.controller.signal, cache: "no-store", credentials: "omit",
        });
        if (!resp.ok) {
          const error = new ApiError(resp.status, await problemOf(resp));
          this.setState("error", error);
          if ([400, 401, 403, 404, 422].includes(resp.status)) return; // retrying cannot help
        } else {
          this.setState("live");
          delay = 500;
          await this.read(resp.body);
        }
      } catch (err) {
        if (this.stopped) return;
      }
      if (this.stopped) return;
      if (this.state !== "error") this.setState("reconnecting");
      await sleep(delay);
      delay = Math.min(delay * 2, 10_000);
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        this.dispatch(frame);
      }
    }
  }

  dispatch(frame) {
    let id = null;
    let type = "message";
    const data = [];
    for (const line of frame.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "id") id = value;
      else if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    if (id) this.lastId = id;
    let event;
    try {
      event = JSON.parse(data.join("\n"));
    } catch {
      return;
    }
    for (const listener of this.listeners) listener({ id, type, event });
  }
}
