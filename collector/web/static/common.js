// What every page shares: the URL as the view's state, the JSON API, building DOM safely (text from
// the data only ever goes through textContent and setAttribute), errors, navigation and sortable tables.

const SVG_NS = "http://www.w3.org/2000/svg";

/** The view's state: the query string of the page's URL. */
export function params() {
  return new URLSearchParams(location.search);
}

/** Changes the URL's parameters (null or "" removes one) and tells the page to show the new view. */
export function setParams(updates, { replace = false } = {}) {
  const next = params();
  for (const [name, value] of Object.entries(updates)) {
    if (value === null || value === undefined || value === "") next.delete(name);
    else next.set(name, String(value));
  }
  const query = next.toString();
  const url = location.pathname + (query ? `?${query}` : "");
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  window.dispatchEvent(new Event("sockfleet:view"));
}

/** Calls ``show`` now and whenever the view's URL changes (links inside the page, back and forward). */
export function onView(show) {
  window.addEventListener("popstate", show);
  window.addEventListener("sockfleet:view", show);
  show();
}

export class ApiError extends Error {}

/** GET /api/v1/<what> with the given parameters (empty ones left out); the answer's JSON. */
export async function api(what, query = {}) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "" && value !== false) search.set(name, value === true ? "1" : String(value));
  }
  const text = search.toString();
  const response = await fetch(`/api/v1/${what}${text ? `?${text}` : ""}`, { headers: { Accept: "application/json" } });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error : `${what}: the server answered ${response.status}`;
    throw new ApiError(message);
  }
  return body;
}

/** An HTML element: ``el("a", {href: url, class: "x"}, "text", child)``. Text is always set as text. */
export function el(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, as ``el``. */
export function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Marks the page as loading, ready or failed (``body[data-state]``), for people and for scripts. */
export function setState(state) {
  document.body.dataset.state = state;
}

export function showError(message) {
  const box = document.getElementById("error");
  if (!box) return;
  box.textContent = message;
  box.hidden = false;
  setState("error");
}

export function clearError() {
  const box = document.getElementById("error");
  if (box) {
    box.textContent = "";
    box.hidden = true;
  }
}

/** Runs one load of a page: the latest load wins, an API error is shown on the page. */
export function loader(load) {
  let latest = 0;
  return async () => {
    const mine = ++latest;
    setState("loading");
    try {
      const done = await load(() => mine !== latest);
      if (mine !== latest) return;
      clearError();
      if (done !== false) setState("ready");
    } catch (error) {
      if (mine !== latest) return;
      showError(error instanceof ApiError ? error.message : `The page failed: ${error.message}`);
    }
  };
}

// The pages, and which of the URL's parameters follow the user from one page to the next.
const PAGES = [
  ["/", "Map"],
  ["/diff", "Diff"],
  ["/ports", "Ports"],
  ["/audit", "Audit"],
];

/** The header's links to the other pages, keeping the moment (``at``) and the host filter. */
export function navigation() {
  const nav = document.getElementById("nav");
  if (!nav) return;
  const current = params();
  nav.replaceChildren();
  for (const [path, label] of PAGES) {
    const keep = new URLSearchParams();
    const at = current.get("at") || (location.pathname === "/diff" ? current.get("to") : null);
    if (at) keep.set(path === "/diff" ? "to" : "at", at);
    if (path === "/diff" && current.get("since") && !at) keep.set("from", current.get("since"));
    for (const name of ["host", "port", "process"]) {
      const value = current.get(name);
      if (value && (path !== "/audit") && (path !== "/diff" || name === "host")) keep.set(name, value);
    }
    const query = keep.toString();
    const link = el("a", { href: path + (query ? `?${query}` : ""), "data-page": label.toLowerCase() }, label);
    if (location.pathname === path) link.setAttribute("aria-current", "page");
    nav.append(link);
  }
}

/** A host page's link, keeping the moment. */
export function hostHref(host, at) {
  const query = new URLSearchParams({ host });
  if (at) query.set("at", at);
  return `/host?${query}`;
}

export function formatTime(value) {
  if (!value) return "";
  return String(value).replace(/\.\d+Z$/, "Z");
}

export function formatBytes(value) {
  if (value === null || value === undefined) return "unknown";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = Number(value);
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${n.toFixed(1)} ${units[unit]}`;
}

/** A time as the CLI takes it (RFC 3339, or relative to ``now`` like -15m, -2h, -7d), in ms; NaN if not. */
export function parseMoment(text, now = Date.now()) {
  if (!text || text === "now") return now;
  const relative = /^-(\d+(?:\.\d+)?)([smhd])$/.exec(text.trim());
  if (relative) {
    const unit = { s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[relative[2]];
    return now - Number(relative[1]) * unit;
  }
  return Date.parse(text);
}

export function toRfc3339(ms) {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");
}

/** Fills a form's inputs (by name) from the URL; on submit, writes them back into the URL. */
export function bindForm(form, names, { onSubmit } = {}) {
  const current = params();
  for (const name of names) {
    const input = form.elements.namedItem(name);
    if (!input) continue;
    if (input.type === "checkbox") input.checked = current.get(name) === "1";
    else input.value = current.get(name) || "";
  }
  if (form.dataset.bound) return;
  form.dataset.bound = "1";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const updates = {};
    for (const name of names) {
      const input = form.elements.namedItem(name);
      if (!input) continue;
      updates[name] = input.type === "checkbox" ? (input.checked ? "1" : null) : input.value.trim();
    }
    if (onSubmit) onSubmit(updates);
    setParams(updates);
  });
}

/**
 * A table sortable by each column (a click on its header; the order is kept in the URL as ``sort``).
 * columns: [{key, label, numeric?, cell?(row) -> Node|string, value?(row)}]; rowAttrs?(row) -> attributes.
 */
export function sortableTable(container, columns, rows, { rowAttrs, empty = "Nothing to show." } = {}) {
  const sort = params().get("sort") || "";
  const descending = sort.startsWith("-");
  const key = sort.replace(/^-/, "");
  const column = columns.find((c) => c.key === key);
  const valueOf = (c, row) => (c.value ? c.value(row) : row[c.key]);
  let shown = rows;
  if (column) {
    shown = [...rows].sort((a, b) => {
      const x = valueOf(column, a);
      const y = valueOf(column, b);
      if (x === y) return 0;
      if (x === null || x === undefined || x === "") return 1;
      if (y === null || y === undefined || y === "") return -1;
      const order = column.numeric ? Number(x) - Number(y) : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
  }
  const head = el("tr");
  for (const c of columns) {
    const state = c.key === key ? (descending ? "descending" : "ascending") : "none";
    const button = el("button", { type: "button", class: "sort", "data-sort": c.key }, c.label);
    button.addEventListener("click", () => {
      // The order in the URL now, not when this table was drawn: a click may come before the redraw.
      const current = params().get("sort") || "";
      setParams({ sort: current === c.key ? `-${c.key}` : c.key }, { replace: true });
    });
    head.append(el("th", { scope: "col", "aria-sort": state, "data-column": c.key }, button));
  }
  const body = el("tbody");
  for (const row of shown) {
    const tr = el("tr", rowAttrs ? rowAttrs(row) : {});
    for (const c of columns) {
      const value = c.cell ? c.cell(row) : row[c.key];
      tr.append(el("td", { "data-column": c.key, class: c.numeric ? "numeric" : null }, value ?? ""));
    }
    body.append(tr);
  }
  const table = el("table", { class: "rows" }, el("thead", {}, head), body);
  container.replaceChildren(rows.length ? table : el("p", { class: "empty" }, empty));
  return table;
}
