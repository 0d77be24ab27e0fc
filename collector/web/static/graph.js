// The map: hosts as boxes on a grid ordered by name, their processes inside, outside endpoints in a
// group of their own on the left, and one arrow per edge from the client's process to the server's.
//
// The layout is deterministic and computed in one pass (no simulation): a host's place depends only on
// its name among every host the database knows, so hosts stay put as the moment changes. Inside an open
// host, a process keeps the slot it was first given while the page is open. A folded host is one box,
// and the edges of its processes become one arrow per (protocol, other end, server port).

import { el, formatBytes, formatTime, svg } from "./common.js";

const CELL_W = 210;
const GAP_X = 90;
const GAP_Y = 60;
const HEAD = 30;
const ROW = 22;
const FOLDED_H = 52;
const OUTSIDE = "(outside)";
const NO_PROCESS = "";
// Above this many arrows their heads are left out: at the zoom that shows them all a head would be less
// than a pixel, and ten thousand markers cost the browser more than the lines; the tooltip says the direction.
const MARKERS_UP_TO = 2500;

/** Text too long for a box is cut, with an ellipsis; the tooltip shows it whole. */
function short(text, max) {
  const value = String(text);
  return value.length > max ? `${value.slice(0, max - 1)}…` : value;
}

function processLabel(name) {
  return name === NO_PROCESS ? "(no process)" : name;
}

/** What the tooltip says about an arrow: its ends, its numbers summed over the edges folded into it. */
function edgeLines(rows, one) {
  const first = rows[0];
  const sum = (field) => rows.reduce((total, r) => total + (r[field] ?? 0), 0);
  const bytes = (field) => (rows.every((r) => r[field] === null || r[field] === undefined) ? null : sum(field));
  const end = (side) =>
    first[`${side}_host`]
      ? `${first[`${side}_host`]} / ${processLabel(one(`${side}_process`) ?? "(several processes)")}`
      : `outside ${first[`${side}_address`] ?? "?"}`;
  return [
    `${end("client")} → ${end("server")}`,
    first.proto === "unix" ? `unix ${first.server_address ?? ""}` : `${first.proto} port ${first.server_port}`,
    first.change ? `change: ${first.change}` : null,
    `connections: ${sum("connections")}`,
    `short-lived: ${sum("short_lived")}`,
    `bytes sent by the client: ${formatBytes(bytes("client_bytes"))}`,
    `bytes sent by the server: ${formatBytes(bytes("server_bytes"))}`,
    rows.length > 1 ? `${rows.length} edges folded into this arrow` : null,
    first.first_seen ? `first seen: ${formatTime(first.first_seen)}` : null,
    first.last_seen ? `last seen: ${formatTime(first.last_seen)}` : null,
    first.direction ? `server side decided by: ${first.direction}` : null,
  ];
}

export class FleetMap {
  /**
   * svgElement: the map's <svg>; tooltip: an element to show details in.
   * onToggle(key): a host's (or the outside group's) header was clicked.
   */
  constructor(svgElement, tooltip, { onToggle, hostHref }) {
    this.svg = svgElement;
    this.tooltip = tooltip;
    this.onToggle = onToggle;
    this.hostHref = hostHref;
    this.slots = new Map(); // host -> [process names, in the order they were first seen]
    this.view = null; // {x, y, k}: the pan and zoom, kept across redraws
    this.details = new Map(); // element id -> lines for the tooltip
    this.extent = { x0: 0, y0: 0, x1: 1, y1: 1 };
    this.outsideCount = 0; // addresses in the outside group, as last drawn
    this.#interact();
  }

  /**
   * hosts: [{host, status, addresses, last_seen}] (every host the database knows, any order);
   * edges: talks or diff rows (a diff row has ``change``); listeners: ports rows;
   * isOpen(key, size): whether that host (or OUTSIDE, holding ``size`` addresses) shows what is inside it;
   * marks: diff rows of listeners.
   */
  render({ hosts, edges, listeners = [], isOpen, marks = [], at = null }) {
    this.details.clear();
    const names = hosts.map((h) => h.host).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const byName = new Map(hosts.map((h) => [h.host, h]));
    const known = new Set(names);
    const procs = new Map(names.map((n) => [n, new Set()]));
    const ports = new Map(); // node key -> listening ports and paths
    const nodeKey = (host, process) => `${host}\u0000${process ?? NO_PROCESS}`;
    const note = (host, process) => {
      if (known.has(host)) procs.get(host).add(process ?? NO_PROCESS);
    };
    for (const e of edges) {
      if (e.client_host) note(e.client_host, e.client_process);
      if (e.server_host) note(e.server_host, e.server_process);
    }
    for (const l of [...listeners, ...marks]) {
      note(l.host, l.process);
      const key = nodeKey(l.host, l.process);
      if (!ports.has(key)) ports.set(key, new Set());
      ports.get(key).add(l.proto === "unix" ? l.path || "unix" : `${l.proto}/${l.local_port}`);
    }
    const outside = new Set();
    for (const e of edges) {
      if (!e.client_host) outside.add(e.client_address || "?");
      if (!e.server_host) outside.add(e.server_address || "?");
    }

    // Slots: the processes of an open host, first-seen order kept for as long as the page is open.
    for (const [host, seen] of procs) {
      const slots = this.slots.get(host) || [];
      const fresh = [...seen].filter((p) => !slots.includes(p)).sort();
      if (fresh.length) this.slots.set(host, [...slots, ...fresh]);
    }
    const outsideSlots = [...(this.slots.get(OUTSIDE) || [])];
    const freshOutside = [...outside].filter((a) => !outsideSlots.includes(a)).sort();
    this.slots.set(OUTSIDE, [...outsideSlots, ...freshOutside]);

    // The grid: columns from the number of hosts alone (never from the moment), about as wide as a screen
    // for folded hosts, at least four across; rows as tall as their tallest host.
    const cols = Math.max(1, Math.min(names.length, 4), Math.ceil(Math.sqrt(names.length * 0.67)));
    const heights = [];
    names.forEach((name, i) => {
      const row = Math.floor(i / cols);
      const h = isOpen(name) ? HEAD + Math.max(1, (this.slots.get(name) || []).length) * ROW + 8 : FOLDED_H;
      heights[row] = Math.max(heights[row] || 0, h);
    });
    const tops = [];
    heights.reduce((y, h, row) => {
      tops[row] = y;
      return y + h + GAP_Y;
    }, 0);

    const nodes = new Map(); // node key -> {x, y, w, h, host}
    const boxes = [];
    names.forEach((name, i) => {
      const x = (i % cols) * (CELL_W + GAP_X);
      const y = tops[Math.floor(i / cols)];
      const open = isOpen(name);
      const slots = this.slots.get(name) || [];
      const h = open ? HEAD + Math.max(1, slots.length) * ROW + 8 : FOLDED_H;
      boxes.push({ name, x, y, h, open, slots, present: procs.get(name) });
      const hostNode = { x, y, w: CELL_W, h, host: name, top: y };
      nodes.set(`host\u0000${name}`, hostNode);
      slots.forEach((p, j) => {
        nodes.set(nodeKey(name, p), open ? { x: x + 10, y: y + HEAD + j * ROW, w: CELL_W - 20, h: ROW - 4, host: name, top: y } : hostNode);
      });
    });
    const outsideList = this.slots.get(OUTSIDE);
    const outsideOpen = isOpen(OUTSIDE, outsideList.length);
    const ox = -(CELL_W + GAP_X * 1.5);
    const oh = outsideOpen ? HEAD + Math.max(1, outsideList.length) * ROW + 8 : FOLDED_H;
    const outsideNode = { x: ox, y: 0, w: CELL_W, h: oh, host: null, top: 0 };
    outsideList.forEach((a, j) => {
      nodes.set(`outside\u0000${a}`, outsideOpen ? { x: ox + 10, y: HEAD + j * ROW, w: CELL_W - 20, h: ROW - 4, host: null, top: 0 } : outsideNode);
    });

    // Edges, folded where their ends are: one arrow per (proto, client node, server node, port, change).
    const endOf = (host, process, address) => {
      if (host && known.has(host)) return nodes.get(nodeKey(host, process)) ? nodeKey(host, process) : `host\u0000${host}`;
      return `outside\u0000${address || "?"}`;
    };
    const arrows = new Map();
    for (const e of edges) {
      const from = endOf(e.client_host, e.client_process, e.client_address);
      const to = endOf(e.server_host, e.server_process, e.server_address);
      const a = nodes.get(from);
      const b = nodes.get(to);
      if (!a || !b) continue;
      const key = [e.proto, ...(a === b ? [from] : [this.#id(a), this.#id(b)]), e.server_port ?? "", e.change || ""].join("|");
      if (!arrows.has(key)) arrows.set(key, { a, b, rows: [] });
      arrows.get(key).rows.push(e);
    }

    // Draw, into a fragment, then swap it in at once.
    const layer = svg("g", { class: "layer" });
    const boxLayer = svg("g", { class: "boxes" });
    const hostLayer = svg("g", { class: "hosts" });
    const edgeLayer = svg("g", { class: "edges" });
    const markLayer = svg("g", { class: "marks" });
    // Hosts' boxes under the lines, their headers and processes over them: a line ends at the process it
    // joins, and never hides a header one clicks.
    layer.append(boxLayer, edgeLayer, hostLayer, markLayer);
    for (const box of boxes) {
      const status = byName.get(box.name)?.status || "unknown";
      boxLayer.append(svg("rect", { class: "host-box", "data-box": box.name, "data-status": status, x: box.x, y: box.y, width: CELL_W, height: box.h, rx: 6 }));
      hostLayer.append(this.#host(box, byName.get(box.name), ports, at));
    }
    if (outsideList.length) {
      boxLayer.append(svg("rect", { class: "host-box outside-box", x: ox, y: 0, width: CELL_W, height: oh, rx: 6 }));
      hostLayer.append(this.#outside(ox, oh, outsideOpen, outsideList));
    }
    let n = 0;
    const markers = arrows.size <= MARKERS_UP_TO;
    this.svg.classList.toggle("many", !markers);
    for (const arrow of arrows.values()) edgeLayer.append(this.#edge(arrow, n++, markers));
    for (const mark of marks) {
      const node = nodes.get(nodeKey(mark.host, mark.process)) || nodes.get(`host\u0000${mark.host}`);
      if (node) markLayer.append(this.#mark(mark, node, n++));
    }
    const used = Math.min(cols, Math.max(1, names.length));
    this.extent = {
      x0: outsideList.length ? ox - 20 : -20,
      y0: -20,
      x1: used * (CELL_W + GAP_X),
      y1: Math.max(tops.length ? tops[tops.length - 1] + heights[heights.length - 1] : 0, oh) + 20,
    };
    if (!this.view) this.fit(); // before the new shapes are in: measuring then costs no layout of them
    this.viewport.replaceChildren(layer);
    this.outsideCount = outsideList.length;
    return { hosts: names.length, arrows: arrows.size, outside: outsideList.length };
  }

  #id(node) {
    if (!node.id) node.id = `${node.x},${node.y}`;
    return node.id;
  }

  #host(box, info, ports, at) {
    const status = info?.status || "unknown";
    const { name, x, y, h, open, slots, present } = box;
    const g = svg("g", { class: `host${open ? " open" : " folded"}`, "data-host": name, "data-status": status, "data-folded": open ? null : "true" });
    const head = svg("g", { class: "host-head", "data-toggle": name, "data-tip": `host\u0000${name}`, role: "button", tabindex: 0 });
    head.append(
      svg("rect", { class: "host-head-box", x, y, width: CELL_W, height: HEAD - 4, rx: 6 }),
      svg("text", { class: "host-name", x: x + 8, y: y + 18 }, `${open ? "▾" : "▸"} ${short(name, 18)}`),
      svg("text", { class: "host-status", x: x + CELL_W - 26, y: y + 18, "text-anchor": "end" }, status),
    );
    g.append(head);
    g.append(svg("a", { class: "host-link", href: this.hostHref(name, at), "aria-label": `${name}: addresses, listeners and timeline` }, svg("text", { x: x + CELL_W - 8, y: y + 18, "text-anchor": "end" }, "↗")));
    this.details.set(`host\u0000${name}`, [
      name,
      `status: ${status}`,
      info?.addresses ? `addresses: ${info.addresses}` : null,
      info?.last_seen ? `last seen: ${formatTime(info.last_seen)}` : null,
      open ? "click to fold its processes" : "click to show its processes",
    ]);
    if (!open) {
      const count = present.size;
      const summary = status === "unknown" ? "not observed" : `${count} process${count === 1 ? "" : "es"}`;
      g.append(svg("text", { class: "host-summary", x: x + 10, y: y + h - 10 }, summary));
      return g;
    }
    slots.forEach((p, j) => {
      if (!present.has(p)) return;
      const key = `${name}\u0000${p}`;
      const py = y + HEAD + j * ROW;
      const listening = ports.get(key);
      const label = listening ? `${short(processLabel(p), 14)}  ${short([...listening].join(" "), 14)}` : short(processLabel(p), 26);
      const node = svg("g", { class: "process", "data-process": p, "data-tip": key });
      node.append(
        svg("rect", { x: x + 10, y: py, width: CELL_W - 20, height: ROW - 4, rx: 3 }),
        svg("text", { x: x + 16, y: py + 13 }, label),
      );
      this.details.set(key, [`${name} / ${processLabel(p)}`, listening ? `listening: ${[...listening].join(", ")}` : null]);
      g.append(node);
    });
    if (status === "unknown") g.append(svg("text", { class: "host-summary", x: x + 10, y: y + h - 10 }, "not observed"));
    return g;
  }

  #outside(x, h, open, addresses) {
    const g = svg("g", { class: `outside${open ? " open" : " folded"}`, "data-outside": "" });
    const head = svg("g", { class: "host-head", "data-toggle": OUTSIDE, "data-tip": "outside", role: "button", tabindex: 0 });
    head.append(
      svg("rect", { class: "host-head-box", x, y: 0, width: CELL_W, height: HEAD - 4, rx: 6 }),
      svg("text", { class: "host-name", x: x + 8, y: 18 }, `${open ? "▾" : "▸"} outside the fleet`),
    );
    g.append(head);
    this.details.set("outside", ["Addresses no host of the fleet held", `${addresses.length} address${addresses.length === 1 ? "" : "es"}`]);
    if (!open) {
      g.append(svg("text", { class: "host-summary", x: x + 10, y: h - 10 }, `${addresses.length} address${addresses.length === 1 ? "" : "es"}`));
      return g;
    }
    addresses.forEach((a, j) => {
      const py = HEAD + j * ROW;
      const node = svg("g", { class: "endpoint", "data-address": a, "data-tip": `outside\u0000${a}` });
      node.append(svg("rect", { x: x + 10, y: py, width: CELL_W - 20, height: ROW - 4, rx: 3 }), svg("text", { x: x + 16, y: py + 13 }, short(a, 26)));
      this.details.set(`outside\u0000${a}`, [`outside endpoint ${a}`]);
      g.append(node);
    });
    return g;
  }

  #edge({ a, b, rows }, n, markers) {
    const first = rows[0];
    const connections = rows.length === 1 ? first.connections : rows.reduce((total, r) => total + (r.connections ?? 0), 0);
    const one = (field) => (rows.length === 1 || rows.every((r) => r[field] === first[field]) ? first[field] ?? "" : null);
    const change = first.change ? first.change.replace(/ /g, "-") : null;
    const path = svg("path", {
      class: `edge ${first.proto}${change ? ` ${change}` : ""}${first.short_lived > 0 && first.short_lived === first.connections ? " short" : ""}`,
      d: this.#curve(a, b, first.server_port),
      "data-edge": n,
      "data-client-host": first.client_host ?? "",
      "data-server-host": first.server_host ?? "",
      "data-server-port": first.server_port ?? "",
      "data-proto": first.proto,
      "data-client-process": one("client_process"),
      "data-server-process": one("server_process"),
      "data-connections": connections,
      "data-change": first.change || null,
      "stroke-width": connections > 1 ? Math.min(6, 1 + Math.log2(connections)).toFixed(1) : null, // 1 by default
      "marker-end": markers ? `url(#arrow-${change || first.proto})` : null,
    });
    this.details.set(`edge\u0000${n}`, () => edgeLines(rows, one));
    return path;
  }

  #curve(a, b, port) {
    const ay = a.y + a.h / 2;
    const by = b.y + b.h / 2;
    if (a === b) {
      // A node talking to itself (a folded host's inner edges): a loop on its right side.
      const x = a.x + a.w;
      const y = a.y + Math.min(a.h / 2, 14);
      return `M${x},${y - 5} C${x + 34},${y - 26} ${x + 34},${y + 26} ${x + 2},${y + 5}`;
    }
    const sameHost = a.host !== null && a.host === b.host;
    if (sameHost || Math.abs(a.x - b.x) < 1) {
      // Same host, or the same column: both ends on the right, bulging out.
      const x1 = a.x + a.w;
      const x2 = b.x + b.w;
      const d = (sameHost ? 18 : 50) + Math.abs(by - ay) * 0.18;
      return `M${x1},${ay} C${x1 + d},${ay} ${x2 + d},${by} ${x2 + 2},${by}`;
    }
    const right = b.x > a.x;
    const x1 = right ? a.x + a.w : a.x;
    const x2 = right ? b.x - 2 : b.x + b.w + 2;
    const k = Math.max(40, Math.abs(x2 - x1) * 0.4) * (right ? 1 : -1);
    const span = Math.abs(b.x - a.x) / (CELL_W + GAP_X);
    if (span > 1.5 && a.top === b.top) {
      // Across other hosts of the same row: out into the gap beside the host, up into the gap above the
      // row, along it, and down beside the other end; spread a little by port so that lines stay apart.
      const dir = right ? 1 : -1;
      const out = (a.x === b.x ? 0 : GAP_X * 0.3) + (a.w < CELL_W ? 10 : 0);
      const lane = a.top - GAP_Y / 2 + ((port ?? 0) % 7) * 4 - 12;
      const xa = x1 + dir * out;
      const xb = x2 - dir * out;
      return `M${x1},${ay} C${xa + dir * 12},${ay} ${xa},${lane} ${xa + dir * 24},${lane} L${xb - dir * 24},${lane} C${xb},${lane} ${xb - dir * 12},${by} ${x2},${by}`;
    }
    return `M${x1},${ay} C${x1 + k},${ay} ${x2 - k},${by} ${x2},${by}`;
  }

  #mark(row, node, n) {
    const what = row.proto === "unix" ? row.path || "unix" : `${row.proto}/${row.local_port}`;
    const sign = row.change === "closed" ? "−" : "+";
    const text = svg(
      "text",
      {
        class: `listener-change ${row.change.replace(/ /g, "-")}`,
        x: node.x + node.w + 6,
        y: node.y + 12,
        "data-listener": n,
        "data-host": null,
        "data-listener-host": row.host,
        "data-local-port": row.local_port ?? "",
        "data-proto": row.proto,
        "data-change": row.change,
        "data-tip": `mark\u0000${n}`,
      },
      `${sign}${short(what, 20)}`,
    );
    this.details.set(`mark\u0000${n}`, [`listener ${row.change}: ${row.host} / ${processLabel(row.process ?? NO_PROCESS)}`, `${what} on ${row.local_address ?? row.path ?? ""}`]);
    return text;
  }

  /** Fits the whole map into the visible area. */
  fit() {
    const width = this.svg.clientWidth || 800;
    const height = this.svg.clientHeight || 600;
    const { x0, y0, x1, y1 } = this.extent;
    const k = Math.min(1.5, width / (x1 - x0), height / (y1 - y0));
    this.view = { k, x: (width - (x1 - x0) * k) / 2 - x0 * k, y: Math.max(0, (height - (y1 - y0) * k) / 2) - y0 * k };
    this.#apply();
  }

  zoom(factor, cx = (this.svg.clientWidth || 800) / 2, cy = (this.svg.clientHeight || 600) / 2) {
    const v = this.view;
    const k = Math.max(0.02, Math.min(8, v.k * factor));
    this.view = { k, x: cx - ((cx - v.x) * k) / v.k, y: cy - ((cy - v.y) * k) / v.k };
    this.#apply();
  }

  #apply() {
    const { x, y, k } = this.view;
    this.viewport.setAttribute("transform", `translate(${x.toFixed(1)},${y.toFixed(1)}) scale(${k.toFixed(4)})`);
  }

  #interact() {
    const defs = svg("defs");
    for (const kind of ["tcp", "udp", "unix", "opened", "closed", "opened-and-closed", "same"]) {
      defs.append(
        svg(
          "marker",
          { id: `arrow-${kind}`, class: `arrow ${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse", markerUnits: "userSpaceOnUse" },
          svg("path", { d: "M0,0 L10,5 L0,10 z" }),
        ),
      );
    }
    this.viewport = svg("g", { class: "viewport" });
    this.svg.append(defs, this.viewport);

    let drag = null;
    this.svg.addEventListener("pointerdown", (event) => {
      if (event.button !== 0 || !this.view) return;
      drag = { x: event.clientX, y: event.clientY, vx: this.view.x, vy: this.view.y, moved: false };
    });
    window.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 4) return;
      drag.moved = true;
      this.svg.classList.add("dragging");
      this.view = { ...this.view, x: drag.vx + dx, y: drag.vy + dy };
      this.#apply();
    });
    window.addEventListener("pointerup", () => {
      if (drag?.moved) this.suppressClick = true;
      drag = null;
      this.svg.classList.remove("dragging");
    });
    this.svg.addEventListener("wheel", (event) => {
      event.preventDefault();
      const box = this.svg.getBoundingClientRect();
      this.zoom(Math.exp(-event.deltaY * 0.0015), event.clientX - box.left, event.clientY - box.top);
    }, { passive: false });
    this.svg.addEventListener("click", (event) => {
      if (this.suppressClick) {
        this.suppressClick = false;
        return;
      }
      const toggle = event.target.closest("[data-toggle]");
      if (toggle) this.onToggle(toggle.getAttribute("data-toggle"));
    });
    this.svg.addEventListener("keydown", (event) => {
      const toggle = event.target.closest?.("[data-toggle]");
      if (toggle && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        this.onToggle(toggle.getAttribute("data-toggle"));
      }
    });
    this.svg.addEventListener("mouseover", (event) => {
      const target = event.target.closest("[data-tip], [data-edge]");
      const key = target && (target.getAttribute("data-tip") ?? `edge\u0000${target.getAttribute("data-edge")}`);
      const found = key && this.details.get(key);
      if (!found) return this.#hide();
      const lines = typeof found === "function" ? found() : found;
      this.tooltip.replaceChildren(...lines.filter(Boolean).map((line, i) => el("div", { class: i === 0 ? "tip-title" : null }, line)));
      this.tooltip.hidden = false;
      this.#place(event);
      if (target.classList.contains("edge")) target.classList.add("hover");
    });
    // Over a host, its edges stand out and the others fade: a large map stays readable host by host.
    let lit = null;
    const light = (host) => {
      if (host === lit) return;
      for (const edge of this.svg.querySelectorAll(".edge.lit")) edge.classList.remove("lit");
      lit = host;
      this.svg.classList.toggle("focus", host !== null);
      if (host === null) return;
      const name = CSS.escape(host);
      for (const edge of this.svg.querySelectorAll(`[data-edge][data-client-host="${name}"], [data-edge][data-server-host="${name}"]`)) {
        edge.classList.add("lit");
      }
    };
    this.svg.addEventListener("mouseover", (event) => light(event.target.closest("[data-host]")?.getAttribute("data-host") ?? null));
    this.svg.addEventListener("mouseleave", () => light(null));
    this.svg.addEventListener("mousemove", (event) => {
      if (!this.tooltip.hidden) this.#place(event);
    });
    this.svg.addEventListener("mouseout", (event) => {
      const target = event.target.closest("[data-tip], [data-edge]");
      if (target) target.classList.remove("hover");
      this.#hide();
    });
  }

  #place(event) {
    // Position through the CSS object model, which the page's content security policy allows.
    const x = Math.min(event.clientX + 14, window.innerWidth - this.tooltip.offsetWidth - 8);
    const y = Math.min(event.clientY + 14, window.innerHeight - this.tooltip.offsetHeight - 8);
    this.tooltip.style.left = `${Math.max(0, x)}px`;
    this.tooltip.style.top = `${Math.max(0, y)}px`;
  }

  #hide() {
    this.tooltip.hidden = true;
  }
}

export { OUTSIDE };
