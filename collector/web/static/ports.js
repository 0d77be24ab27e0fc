// The ports page: every listener (the ``ports`` question) as a sortable table, exposed ones marked.

import { api, bindForm, el, hostHref, loader, navigation, onView, params, sortableTable } from "./common.js";

// A listener is one row per socket: these fields tell two apart.
const identity = (r) => [r.host, r.netns, r.proto, r.local_address, r.local_port, r.path, r.inode].join("\u0000");

const show = loader(async (stale) => {
  navigation();
  const names = ["at", "host", "port", "proto", "process", "exposed"];
  bindForm(document.getElementById("filters"), names);
  const query = params();
  const filter = Object.fromEntries(names.filter((n) => n !== "exposed").map((n) => [n, query.get(n)]));
  const onlyExposed = query.get("exposed") === "1";
  // Which listeners are exposed is the collector's rule: ask it, rather than guess here.
  const [rows, exposed] = await Promise.all([
    onlyExposed ? Promise.resolve(null) : api("ports", filter),
    api("ports", { ...filter, exposed: true }),
  ]);
  if (stale()) return false;
  const reachable = new Set(exposed.map(identity));
  const shown = (rows ?? exposed).map((r) => ({ ...r, exposed: reachable.has(identity(r)) ? "yes" : "no" }));
  const at = query.get("at");
  const columns = [
    { key: "host", label: "host", cell: (r) => el("a", { href: hostHref(r.host, at), "data-host-link": r.host }, r.host) },
    { key: "proto", label: "proto" },
    { key: "local_address", label: "address" },
    { key: "local_port", label: "port", numeric: true },
    { key: "path", label: "path" },
    { key: "process", label: "process", cell: (r) => (r.owners > 1 ? `${r.process} (+${r.owners - 1})` : r.process ?? "") },
    { key: "pid", label: "pid", numeric: true },
    { key: "user", label: "user" },
    { key: "state", label: "state" },
    { key: "exposed", label: "exposed" },
  ];
  sortableTable(document.getElementById("ports"), columns, shown, {
    rowAttrs: (r) => ({ "data-host": null, "data-row-host": r.host, "data-port": r.local_port ?? "", "data-exposed": r.exposed }),
    empty: "No listener matches.",
  });
  document.getElementById("summary").textContent =
    `${at ? `at ${at}` : "now"}: ${shown.length} listener${shown.length === 1 ? "" : "s"}, ${exposed.length} exposed (bound beyond loopback)`;
  return true;
});

onView(show);
