// The host page: one host's addresses and status at a moment, its listeners and edges then, and its
// socket timeline (the ``history`` question) as bars and as a table.

import { api, bindForm, el, formatBytes, formatTime, loader, navigation, onView, params, parseMoment, setParams, sortableTable, svg } from "./common.js";
import { fleetAt } from "./fleet.js";

// The timeline draws at most this many lanes (one per port or path and process); the table has every row.
const LANES = 60;

const show = loader(async (stale) => {
  navigation();
  const names = ["host", "at", "since", "port"];
  bindForm(document.getElementById("filters"), names);
  const query = params();
  const host = query.get("host");
  if (!host) {
    document.getElementById("title").textContent = "Which host?";
    document.getElementById("facts").replaceChildren();
    return true;
  }
  if (!query.get("since")) {
    setParams({ since: "-1h" }, { replace: true });
    return false;
  }
  const at = query.get("at");
  const port = query.get("port");
  const [fleet, listeners, edges, timeline, range] = await Promise.all([
    fleetAt(at),
    api("ports", { host, at, port }),
    api("talks", { host, at, port }),
    api("history", { host, port, since: query.get("since") }),
    api("range"),
  ]);
  if (stale()) return false;
  const info = fleet.find((h) => h.host === host || h.host_id === host);
  const status = info?.status ?? "unknown";
  const title = document.getElementById("title");
  title.replaceChildren(info?.host ?? host, " ", el("span", { class: `status-${status}`, "data-status": status }, `(${status}${at ? ` at ${at}` : ""})`));
  const mapLink = new URLSearchParams({ host: info?.host ?? host });
  if (at) mapLink.set("at", at);
  facts([
    ["addresses", info?.addresses || (status === "unknown" ? "not observed at this moment" : "")],
    ["host id", info?.host_id],
    ["agent version", info?.agent_version],
    ["first seen", formatTime(info?.first_seen)],
    ["last seen", formatTime(info?.last_seen)],
    ["sockets", info?.sockets],
    ["scans not delivered", info?.gaps],
    ["events lost", info?.events_lost],
    ["clock skew (s)", info?.clock_skew],
    ["last refusal", info?.last_refusal ? `${formatTime(info.last_refusal_at)}: ${info.last_refusal}` : null],
    ["on the map", el("a", { href: `/?${mapLink}` }, "who it talks to")],
  ]);
  sortableTable(
    document.getElementById("listeners"),
    [
      { key: "proto", label: "proto" },
      { key: "local_address", label: "address" },
      { key: "local_port", label: "port", numeric: true },
      { key: "path", label: "path" },
      { key: "process", label: "process" },
      { key: "pid", label: "pid", numeric: true },
      { key: "user", label: "user" },
    ],
    listeners,
    { rowAttrs: (r) => ({ "data-port": r.local_port ?? "", "data-path": r.path ?? "" }), empty: status === "unknown" ? "Not observed at this moment: its listeners are unknown." : "No listener." },
  );
  const end = (r, side) => (r[`${side}_host`] ? `${r[`${side}_host`]} / ${r[`${side}_process`] ?? "(no process)"}` : `outside ${r[`${side}_address`] ?? ""}`);
  sortableTable(
    document.getElementById("edges"),
    [
      { key: "proto", label: "proto" },
      { key: "client", label: "client", value: (r) => end(r, "client"), cell: (r) => end(r, "client") },
      { key: "server", label: "server", value: (r) => end(r, "server"), cell: (r) => end(r, "server") },
      { key: "server_port", label: "port", numeric: true },
      { key: "connections", label: "connections", numeric: true },
      { key: "short_lived", label: "short-lived", numeric: true },
      { key: "client_bytes", label: "client bytes", numeric: true, cell: (r) => (r.client_bytes === null ? "" : formatBytes(r.client_bytes)) },
      { key: "server_bytes", label: "server bytes", numeric: true, cell: (r) => (r.server_bytes === null ? "" : formatBytes(r.server_bytes)) },
      { key: "direction", label: "server decided by" },
    ],
    edges,
    { rowAttrs: () => ({ "data-edge-row": "" }), empty: status === "unknown" ? "Not observed at this moment." : "No edge." },
  );
  drawTimeline(timeline, parseMoment(query.get("since"), Date.parse(range.now)), Date.parse(range.now));
  sortableTable(
    document.getElementById("history"),
    [
      { key: "valid_from", label: "opened", cell: (r) => formatTime(r.valid_from) },
      { key: "valid_to", label: "closed", cell: (r) => formatTime(r.valid_to) || "open" },
      { key: "proto", label: "proto" },
      { key: "state", label: "state" },
      { key: "local", label: "local", value: (r) => local(r), cell: (r) => local(r) },
      { key: "remote", label: "remote", value: (r) => remote(r), cell: (r) => remote(r) },
      { key: "process", label: "process" },
      { key: "pid", label: "pid", numeric: true },
    ],
    timeline,
    { rowAttrs: (r) => ({ "data-state": r.state, "data-port": r.local_port ?? "" }), empty: "No socket in this time." },
  );
  return true;
});

function local(r) {
  return r.proto === "unix" ? r.path ?? "(unnamed)" : `${r.local_address}:${r.local_port}`;
}

function remote(r) {
  return r.remote_address ? `${r.remote_address}:${r.remote_port}` : "";
}

function facts(pairs) {
  const list = document.getElementById("facts");
  list.replaceChildren();
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    list.append(el("dt", {}, term), el("dd", {}, value));
  }
}

/** One lane per (proto, port or path, state class, process), a bar per interval, from ``start`` to ``end``. */
function drawTimeline(rows, start, end) {
  const box = document.getElementById("timeline");
  const lanes = new Map();
  for (const r of rows) {
    const key = `${r.proto} ${r.state === "LISTEN" ? "listen" : r.remote_address ? "to " + remote(r) : ""} ${local(r)} ${r.process ?? ""}`;
    if (!lanes.has(key)) lanes.set(key, []);
    lanes.get(key).push(r);
  }
  const shown = [...lanes.entries()].slice(0, LANES);
  const first = Math.min(start, ...rows.map((r) => Date.parse(r.valid_from)));
  const span = Math.max(1000, end - first);
  const width = Math.max(600, box.clientWidth || 1000);
  const left = 330;
  const lane = 16;
  const height = 24 + shown.length * lane;
  box.setAttribute("viewBox", `0 0 ${width} ${height}`);
  box.setAttribute("height", String(height));
  const x = (t) => left + ((t - first) / span) * (width - left - 10);
  const parts = [
    svg("text", { class: "axis", x: left, y: 12 }, new Date(first).toISOString().replace(/\.\d+Z$/, "Z")),
    svg("text", { class: "axis", x: width - 10, y: 12, "text-anchor": "end" }, new Date(end).toISOString().replace(/\.\d+Z$/, "Z")),
  ];
  shown.forEach(([key, intervals], i) => {
    const y = 20 + i * lane;
    parts.push(svg("text", { x: 4, y: y + 11 }, key.length > 52 ? `${key.slice(0, 51)}…` : key));
    for (const r of intervals) {
      const from = Date.parse(r.valid_from);
      const to = r.valid_to ? Date.parse(r.valid_to) : end;
      const bar = svg("rect", {
        class: `bar${r.state === "LISTEN" ? " listen" : ""}${r.valid_to ? "" : " open"}`,
        x: x(from),
        y: y + 2,
        width: Math.max(2, x(to) - x(from)),
        height: lane - 5,
      });
      bar.append(svg("title", {}, `${key}: ${formatTime(r.valid_from)} – ${r.valid_to ? formatTime(r.valid_to) : "still open"}`));
      parts.push(bar);
    }
  });
  box.replaceChildren(...parts);
  document.getElementById("timeline-note").textContent =
    lanes.size > LANES ? `The first ${LANES} of ${lanes.size} sockets; the table below has them all.` : `${rows.length} socket interval${rows.length === 1 ? "" : "s"}; green: listening, dark: still open.`;
}

onView(show);
