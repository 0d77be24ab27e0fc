// The audit page: the ``audit`` question's findings (exposed and new listeners, broken policy rules,
// hosts that cannot be seen) as a sortable table, violations first.

import { api, bindForm, el, hostHref, loader, navigation, onView, params, sortableTable } from "./common.js";

const SEVERITY = { violation: 0, unknown: 1, notice: 2 };

const show = loader(async (stale) => {
  navigation();
  const names = ["at", "new-within", "lookback", "allow-unobserved"];
  bindForm(document.getElementById("filters"), names);
  const query = params();
  const findings = await api("audit", Object.fromEntries(names.map((n) => [n, n === "allow-unobserved" ? query.get(n) === "1" : query.get(n)])));
  if (stale()) return false;
  const at = query.get("at");
  const ordered = [...findings].sort((a, b) => (SEVERITY[a.severity] ?? 3) - (SEVERITY[b.severity] ?? 3));
  const columns = [
    { key: "severity", label: "severity", value: (r) => SEVERITY[r.severity] ?? 3, cell: (r) => r.severity },
    { key: "finding", label: "finding" },
    { key: "host", label: "host", cell: (r) => (r.host ? el("a", { href: hostHref(r.host, at) }, r.host) : "") },
    { key: "proto", label: "proto" },
    { key: "local_address", label: "address" },
    { key: "local_port", label: "port", numeric: true },
    { key: "path", label: "path" },
    { key: "process", label: "process" },
    { key: "pid", label: "pid", numeric: true },
    { key: "rule", label: "rule" },
    { key: "detail", label: "detail" },
  ];
  sortableTable(document.getElementById("findings"), columns, ordered, {
    rowAttrs: (r) => ({ "data-severity": r.severity, "data-finding": r.finding, "data-row-host": r.host ?? "", "data-port": r.local_port ?? "" }),
    empty: "No finding: no exposed or new listener, every host observed.",
  });
  const count = (s) => findings.filter((f) => f.severity === s).length;
  document.getElementById("summary").textContent =
    `${at ? `at ${at}` : "now"}: ${count("violation")} violation${count("violation") === 1 ? "" : "s"}, ` +
    `${count("unknown")} host${count("unknown") === 1 ? "" : "s"} not observed, ${count("notice")} notice${count("notice") === 1 ? "" : "s"}` +
    (findings.some((f) => f.rule) || count("violation") ? "" : " (without a policy file only notices and hosts not observed are listed)");
  return true;
});

onView(show);
