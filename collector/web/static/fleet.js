// What the map and the diff page share: every host the database knows with its status at the moment
// shown, which hosts show their processes (``open`` in the URL), and the time control.

import { api, params, parseMoment, setParams, toRfc3339 } from "./common.js";
import { OUTSIDE } from "./graph.js";

// Above this many hosts, a host shows its processes only once clicked.
export const FOLD_ABOVE = 30;

/**
 * Every host the database knows, each with its status at ``at`` (``observed`` or ``unknown``; a host
 * the database learned of only later is unknown then), or now (``live``, ``stale``) without ``at``.
 */
export async function fleetAt(at) {
  const [now, then] = await Promise.all([api("hosts"), at ? api("hosts", { at }) : Promise.resolve(null)]);
  if (!then) return now;
  const seen = new Map(then.map((h) => [h.host, h]));
  const all = now.map((h) => seen.get(h.host) || { ...h, status: "unknown", sockets: null, addresses: "" });
  for (const h of then) if (!all.some((x) => x.host === h.host)) all.push(h);
  return all;
}

// Above this many addresses, the outside group is folded until clicked.
export const OUTSIDE_FOLD_ABOVE = 40;

/**
 * Whether a host (or the outside group, given how many addresses it holds) shows what is inside it:
 * ``open`` in the URL is all, none, or a list of names; without it, small fleets show everything.
 */
export function openTest(hostCount) {
  const value = params().get("open");
  if (value === "all") return () => true;
  if (value === "none") return () => false;
  if (value === null) return (key, size = 0) => hostCount <= FOLD_ABOVE && (key !== OUTSIDE || size <= OUTSIDE_FOLD_ABOVE);
  const names = new Set(value.split(",").filter(Boolean));
  return (key) => names.has(key);
}

/** Folds or unfolds one host (or the outside group of ``outside`` addresses), keeping the others as they are. */
export function toggleOpen(key, names, outside) {
  const isOpen = openTest(names.length);
  const shown = new Set([...names, OUTSIDE].filter((n) => isOpen(n, n === OUTSIDE ? outside : 0)));
  if (shown.has(key)) shown.delete(key);
  else shown.add(key);
  const value = shown.size === 0 ? "none" : shown.size === names.length + 1 ? "all" : [...shown].sort().join(",");
  setParams({ open: value }, { replace: false });
}

/**
 * The slider over the stored history (``/api/v1/range``), placed at ``value`` (RFC 3339 or relative) or at
 * the end; ``label(ms)`` says what a position means, ``pick(ms)`` is called when the slider is released.
 */
export function bindSlider(slider, output, range, value, { label, pick, idle = null }) {
  const now = Date.parse(range.now);
  const first = range.first ? Date.parse(range.first) : now;
  // Whole seconds, the last one not after the last observation (a moment in the future is refused).
  const low = Math.floor(first / 1000) * 1000;
  const last = Math.max(Math.floor((range.last ? Date.parse(range.last) : now) / 1000) * 1000, low + 1000);
  slider.min = String(low);
  slider.max = String(last);
  slider.disabled = !range.first;
  const at = value ? parseMoment(value, now) : last;
  slider.value = String(Number.isNaN(at) ? last : at);
  output.textContent = value ? label(Number(slider.value)) : idle ?? `now (${toRfc3339(now)})`;
  slider.oninput = () => {
    output.textContent = label(Number(slider.value));
  };
  slider.onchange = () => pick(Number(slider.value));
}
