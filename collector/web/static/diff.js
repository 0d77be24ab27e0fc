// The diff page: the map at the second moment (``to``, or now), with the edges and listeners that opened
// since the first (``from``) marked one way and those that closed marked another, and the changes as a table.

import { api, bindForm, formatTime, hostHref, loader, navigation, onView, params, setParams, sortableTable, el } from "./common.js";
import { fleetAt, openTest, toggleOpen } from "./fleet.js";
import { FleetMap } from "./graph.js";

// The fields that name an edge (as the diff names it), to find a changed edge among the edges at ``to``.
const EDGE_KEY = ["proto", "client_host", "client_address", "client_process", "server_host", "server_address", "server_port", "server_process"];
const keyOf = (row) => EDGE_KEY.map((f) => row[f] ?? "").join("\u0000");

let names = [];
const map = new FleetMap(document.getElementById("map"), document.getElementById("tooltip"), {
  onToggle: (key) => toggleOpen(key, names, map.outsideCount),
  hostHref: (host, at) => hostHref(host, at),
});

const show = loader(async (stale) => {
  navigation();
  const query = params();
  if (!query.get("from")) {
    setParams({ from: "-1h" }, { replace: true });
    return false;
  }
  bindForm(document.getElementById("moments"), ["from", "to", "host", "short-lived"]);
  const from = query.get("from");
  const to = query.get("to");
  const host = query.get("host");
  const [changes, hosts, edges, before] = await Promise.all([
    api("diff", { from, to, host, "short-lived": query.get("short-lived") === "1" }),
    fleetAt(to),
    api("talks", { at: to, host }),
    fleetAt(from),
  ]);
  if (stale()) return false;
  names = hosts.map((h) => h.host);
  const changed = new Map(changes.filter((c) => c.kind === "edge").map((c) => [keyOf(c), c]));
  const drawn = [
    ...edges.map((e) => (changed.has(keyOf(e)) ? { ...e, change: changed.get(keyOf(e)).change } : { ...e, change: "same" })),
    ...[...changed.values()].filter((c) => !edges.some((e) => keyOf(e) === keyOf(c))),
  ];
  const marks = changes.filter((c) => c.kind === "listener");
  map.render({ hosts, edges: drawn, marks, isOpen: openTest(hosts.length), at: to });
  // The diff compares only hosts observed at both moments: say which were left out.
  const unseen = new Set(before.filter((h) => h.status === "unknown").map((h) => h.host));
  for (const h of hosts) if (h.status === "unknown") unseen.add(h.host);
  const left = [...unseen].filter((name) => !host || name === host).sort();
  const count = (kind, change) => changes.filter((c) => c.kind === kind && c.change === change).length;
  document.getElementById("summary").textContent =
    `from ${from} to ${to || "now"}: ${count("edge", "opened")} edges opened, ${count("edge", "closed")} closed; ` +
    `${count("listener", "opened")} listeners opened, ${count("listener", "closed")} closed` +
    (left.length ? `; not compared, as not observed at both moments: ${left.join(", ")}` : "; every host observed at both moments");
  table(changes, to);
  return true;
});

function table(changes, to) {
  const ends = (row, side) => {
    const hostName = row[`${side}_host`];
    const process = row[`${side}_process`];
    if (!hostName) return `outside ${row[`${side}_address`] ?? ""}`;
    return `${hostName} / ${process ?? "(no process)"}`;
  };
  const columns = [
    { key: "change", label: "change" },
    { key: "kind", label: "kind" },
    { key: "proto", label: "proto" },
    { key: "client", label: "client", value: (r) => (r.kind === "edge" ? ends(r, "client") : ""), cell: (r) => (r.kind === "edge" ? ends(r, "client") : "") },
    {
      key: "server",
      label: "server or listener",
      value: (r) => (r.kind === "edge" ? ends(r, "server") : `${r.host} / ${r.process ?? "(no process)"}`),
      cell: (r) => (r.kind === "edge" ? ends(r, "server") : el("a", { href: hostHref(r.host, to) }, `${r.host} / ${r.process ?? "(no process)"}`)),
    },
    { key: "port", label: "port or path", value: (r) => r.server_port ?? r.local_port ?? r.path ?? r.server_address, cell: (r) => String(r.server_port ?? r.local_port ?? r.path ?? r.server_address ?? "") },
    { key: "connections", label: "connections", numeric: true },
    { key: "last_seen", label: "last seen", cell: (r) => formatTime(r.last_seen) },
  ];
  sortableTable(document.getElementById("changes"), columns, changes, {
    rowAttrs: (r) => ({ "data-change": r.change, "data-kind": r.kind }),
    empty: "Nothing opened or closed between these moments.",
  });
}

document.getElementById("fit").addEventListener("click", () => map.fit());
document.getElementById("open-all").addEventListener("click", () => setParams({ open: "all" }));
document.getElementById("fold-all").addEventListener("click", () => setParams({ open: "none" }));

onView(show);
