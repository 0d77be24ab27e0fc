// The map page: who talks to whom at a moment (``at``, or now) or over a window (``since``, ``until``).

import { api, bindForm, el, hostHref, loader, navigation, onView, params, parseMoment, setParams, toRfc3339 } from "./common.js";
import { bindSlider, FOLD_ABOVE, fleetAt, openTest, toggleOpen } from "./fleet.js";
import { FleetMap } from "./graph.js";

// Above this many hosts the map does not ask for listeners: a folded host does not show them.
const LISTENERS_UP_TO = 200;

let names = [];
const map = new FleetMap(document.getElementById("map"), document.getElementById("tooltip"), {
  onToggle: (key) => toggleOpen(key, names, map.outsideCount),
  hostHref: (host, at) => hostHref(host, at),
});

const show = loader(async (stale) => {
  navigation();
  const query = params();
  const at = query.get("at");
  const since = query.get("since");
  const until = query.get("until");
  const filter = { host: query.get("host"), port: query.get("port"), process: query.get("process") };
  const windowed = Boolean(since);
  document.body.dataset.mode = windowed ? "window" : "moment";
  const timeForm = document.getElementById("time");
  bindForm(timeForm, ["at", "since", "until"]);
  timeForm.elements.namedItem("mode").value = windowed ? "window" : "moment";
  bindForm(document.getElementById("filters"), ["host", "port", "process"]);

  const moment = windowed ? until : at;
  const fleet = fleetAt(moment);
  const [range, hosts, edges, listeners] = await Promise.all([
    api("range"),
    fleet,
    windowed ? api("talks", { since, until, ...filter }) : api("talks", { at, ...filter }),
    fleet.then((all) => (all.length <= LISTENERS_UP_TO ? api("ports", { at: moment, ...filter }) : [])),
  ]);
  if (stale()) return false;
  if (windowed) {
    // Over a window a host counts if it was observed at any moment of it: one with edges was.
    const talked = new Set(edges.flatMap((e) => [e.client_host, e.server_host]));
    for (const h of hosts) if (h.status === "unknown" && talked.has(h.host)) h.status = "observed";
  }
  names = hosts.map((h) => h.host);
  const slider = document.getElementById("slider");
  const output = document.getElementById("moment");
  if (windowed) {
    // Over a window the slider moves its end, and its start with it: the window keeps its length.
    const now = Date.parse(range.now);
    const length = Math.max(1000, parseMoment(until || "now", now) - parseMoment(since, now));
    bindSlider(slider, output, range, until, {
      label: (ms) => `from ${toRfc3339(ms - length)} until ${toRfc3339(ms)}`,
      pick: (ms) => setParams({ since: toRfc3339(ms - length), until: toRfc3339(ms) }),
      idle: `from ${since} until now`,
    });
  } else {
    bindSlider(slider, output, range, at, { label: toRfc3339, pick: (ms) => setParams({ at: toRfc3339(ms) }) });
  }
  fillHostList(names);
  const drawn = map.render({ hosts, edges, listeners, isOpen: openTest(hosts.length), at: moment });
  if (!hosts.length) {
    document.getElementById("summary").textContent = "The database holds no host yet: start a collector and an agent (see the README's quick start).";
    return true;
  }
  const unknown = hosts.filter((h) => h.status === "unknown").length;
  const when = windowed ? `from ${since} until ${until || "now"}` : at ? `at ${at}` : "now";
  document.getElementById("summary").textContent =
    `${when}: ${hosts.length - unknown} host${hosts.length - unknown === 1 ? "" : "s"} observed` +
    (unknown ? `, ${unknown} not observed (unknown)` : "") +
    `, ${edges.length} edge${edges.length === 1 ? "" : "s"}` +
    (drawn.outside ? `, ${drawn.outside} outside address${drawn.outside === 1 ? "" : "es"}` : "") +
    (hosts.length > FOLD_ABOVE && params().get("open") === null ? "; click a host to show its processes" : "");
  return true;
});

function fillHostList(hostNames) {
  let list = document.getElementById("host-names");
  if (!list) {
    list = el("datalist", { id: "host-names" });
    document.body.append(list);
    document.querySelector("#filters input[name=host]").setAttribute("list", "host-names");
  }
  if (list.childElementCount !== hostNames.length) list.replaceChildren(...hostNames.map((n) => el("option", { value: n })));
}

document.getElementById("now").addEventListener("click", () => setParams({ at: null, since: null, until: null }));
document.getElementById("clear-filters").addEventListener("click", () => setParams({ host: null, port: null, process: null }));
document.getElementById("fit").addEventListener("click", () => map.fit());
document.getElementById("zoom-in").addEventListener("click", () => map.zoom(1.25));
document.getElementById("zoom-out").addEventListener("click", () => map.zoom(0.8));
document.getElementById("open-all").addEventListener("click", () => setParams({ open: "all" }));
document.getElementById("fold-all").addEventListener("click", () => setParams({ open: "none" }));
for (const radio of document.querySelectorAll("#time input[name=mode]")) {
  radio.addEventListener("change", () => {
    const query = params();
    if (radio.value === "window" && radio.checked) {
      const at = query.get("at");
      const end = at ? parseMoment(at) : NaN;
      setParams({ since: Number.isNaN(end) ? "-1h" : toRfc3339(end - 3.6e6), until: at, at: null });
    }
    if (radio.value === "moment" && radio.checked) setParams({ at: query.get("until"), since: null, until: null });
  });
}

onView(show);
