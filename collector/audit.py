"""The open-port audit: listeners exposed beyond loopback, listeners new on their host, and policy rules.

A policy is a TOML file of rules; each applies to the hosts whose name matches its glob::

    [[rule]]
    hosts = "web-*"           # fnmatch glob on the host name (default "*")
    allow = [22, 80, 443]     # exposed inet listeners may use only these ports
    forbid = [23, 3306]       # these ports must not listen at all, on any address
    [rule.owners]             # a port's listener must belong to one of these processes
    22 = ["sshd"]

Exposed and new listeners are notices; a broken rule is a violation, and
``sockfleet audit`` exits with status 1 when there is one.  A host that cannot be
seen cannot be audited, and is never taken for a clean one: a host observed within
the lookback (or holding an active agent token) but not observed at the moment
audited is a finding of its own (severity ``unknown``, finding ``not observed``),
and makes the audit exit with status 3 when there is no violation.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, literal_column, select

from sockfleet.collector import rules
from sockfleet.collector.errors import UsageError
from sockfleet.collector.queries import STALE_INTERVALS, Filters, observed, sockets_at
from sockfleet.collector.schema import credentials, host_state, hosts, pruned_listeners, sockets
from sockfleet.collector.times import rfc3339

FINDING_FIELDS = (
    "severity",
    "finding",
    "host",
    "proto",
    "local_address",
    "local_port",
    "path",
    "process",
    "pid",
    "rule",
    "detail",
)


@dataclass(frozen=True, slots=True)
class Rule:
    hosts: str = "*"
    allow: frozenset[int] | None = None
    forbid: frozenset[int] = frozenset()
    owners: dict[int, frozenset[str]] = field(default_factory=dict)
    index: int = 0


def load_policy(path: str) -> list[Rule]:
    """Rules from a TOML policy file; any mistake is a one-line ``UsageError`` naming the place."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--policy {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--policy {path}: not valid TOML: {' '.join(str(exc).split())}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"--policy {path}: not a policy file (not UTF-8 text)") from exc
    unknown = set(document) - {"rule"}
    if unknown:
        raise UsageError(f"--policy {path}: unknown key {sorted(unknown)[0]!r} (expected [[rule]] tables)")
    rules = document.get("rule", [])
    if not isinstance(rules, list):
        raise UsageError(f"--policy {path}: 'rule' must be an array of tables ([[rule]])")
    return [_rule(path, index, raw) for index, raw in enumerate(rules, start=1)]


def _ports(path: str, where: str, value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not all(isinstance(p, int) and 0 <= p <= 65535 for p in value):
        raise UsageError(f"--policy {path}: {where} must be a list of port numbers (0-65535)")
    return frozenset(value)


def _rule(path: str, index: int, raw: Any) -> Rule:
    where = f"rule {index}"
    if not isinstance(raw, dict):
        raise UsageError(f"--policy {path}: {where} is not a table")
    unknown = set(raw) - {"hosts", "allow", "forbid", "owners"}
    if unknown:
        raise UsageError(f"--policy {path}: {where} has unknown key {sorted(unknown)[0]!r}")
    pattern = raw.get("hosts", "*")
    if not isinstance(pattern, str) or not pattern:
        raise UsageError(f"--policy {path}: {where}.hosts must be a host name glob")
    owners: dict[int, frozenset[str]] = {}
    for port, value in (raw.get("owners") or {}).items():
        if not port.isdigit() or int(port) > 65535:
            raise UsageError(f"--policy {path}: {where}.owners key {port!r} is not a port")
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"--policy {path}: {where}.owners.{port} must be a process name or a list of them")
        owners[int(port)] = frozenset(names)
    allow = _ports(path, f"{where}.allow", raw["allow"]) if "allow" in raw else None
    forbid = _ports(path, f"{where}.forbid", raw.get("forbid", []))
    return Rule(pattern, allow, forbid, owners, index)


def exposed(row: dict[str, Any]) -> bool:
    return rules.exposed(row["proto"], row.get("local_address"))


def audit(
    conn: Connection,
    at: datetime | None,
    rules: list[Rule],
    new_within: timedelta,
    moment: datetime,
    lookback: timedelta = timedelta(days=7),
) -> tuple[list[dict[str, Any]], list[str]]:
    """Findings on the listeners at ``at`` (default now), and the hosts not observed then.

    Among the hosts not observed, those last observed within ``lookback`` before the moment, and the
    enrolled hosts (an active agent token), are findings (``not observed``); hosts gone for longer and
    never enrolled are only named.
    """
    seen = observed(conn, at)
    listeners = sockets_at(conn, at, Filters(), only_listening=True, hosts_known=seen)
    if at is None:
        listeners = [row for row in listeners if row["host"] in seen.known.values()]
    first = _first_seen(conn)
    findings = []
    for row in listeners:
        if exposed(row):
            findings.append(_finding(row, "notice", "exposed", None, "bound beyond loopback"))
        started = first.get((row["host"], row["proto"], row["local_port"], row["path"]))
        if started is not None and started >= moment - new_within:
            since = f"first seen on this host at {rfc3339(started)}"
            findings.append(_finding(row, "notice", "new", None, since))
        for rule in rules:
            if fnmatchcase(row["host"], rule.hosts):
                findings.extend(_check(row, rule))
    findings += _unobserved(conn, seen, moment, lookback)
    order = {"violation": 0, "unknown": 1, "notice": 2}
    findings.sort(key=lambda f: (order[f["severity"]], f["host"], f["local_port"] or 0, f["finding"]))
    return findings, sorted(seen.unknown.values())


def _unobserved(conn: Connection, seen: Any, moment: datetime, lookback: timedelta) -> list[dict[str, Any]]:
    """A finding for each host that should have been seen at ``moment`` and was not: one that reported, or
    only connected, within the lookback, and one that holds an active token."""
    rows = conn.execute(
        select(hosts.c.id, hosts.c.host_id, hosts.c.name, hosts.c.interval_seconds, host_state.c.first_seen).join_from(
            hosts, host_state, host_state.c.host_ref == hosts.c.id
        )
    ).all()
    enrolled = set(conn.execute(select(credentials.c.host_id).where(credentials.c.revoked_at.is_(None))).scalars())
    found = []
    for row in rows:
        if row.id not in seen.unknown or row.first_seen > moment:
            continue
        last = seen.last.get(row.id)
        if last is not None and moment - last <= lookback:
            detail = (
                f"last report {rfc3339(last)}; a host is observed while its last report is at most "
                f"{STALE_INTERVALS} scan intervals ({STALE_INTERVALS * row.interval_seconds} s) old"
            )
        elif last is None and moment - row.first_seen <= lookback:
            detail = f"connected first at {rfc3339(row.first_seen)}, no scan stored since (see `sockfleet hosts`)"
        elif row.host_id in enrolled:
            detail = "enrolled (an active agent token), " + (
                f"last report {rfc3339(last)}" if last else "no report yet"
            )
        else:
            continue  # gone for longer than the lookback, and not enrolled: retired
        found.append(_unknown(row.name, detail))
    reported = {row.host_id for row in rows}
    found += [
        _unknown(host_id, "enrolled (an active agent token), never reported") for host_id in sorted(enrolled - reported)
    ]
    return found


def _unknown(host: str, detail: str) -> dict[str, Any]:
    return {
        "severity": "unknown",
        "finding": "not observed",
        "host": host,
        **{k: None for k in FINDING_FIELDS[3:9]},
        "rule": None,
        "detail": detail,
    }


def _check(row: dict[str, Any], rule: Rule) -> list[dict[str, Any]]:
    port = row["local_port"]
    out = []
    if port in rule.forbid:
        out.append(_finding(row, "violation", "forbidden port", rule, f"port {port} must not listen"))
    if rule.allow is not None and exposed(row) and port not in rule.allow:
        allowed = ", ".join(map(str, sorted(rule.allow))) or "none"
        out.append(_finding(row, "violation", "port not allowed", rule, f"exposed ports allowed: {allowed}"))
    owners = rule.owners.get(port) if port is not None else None
    if owners is not None and row["process"] not in owners:
        held = row["process"] or "no process"
        out.append(
            _finding(
                row,
                "violation",
                "wrong owner",
                rule,
                f"port {port} must belong to {' or '.join(sorted(owners))}, not {held}",
            )
        )
    return out


def _finding(row: dict[str, Any], severity: str, finding: str, rule: Rule | None, detail: str) -> dict[str, Any]:
    return {
        "severity": severity,
        "finding": finding,
        **{k: row.get(k) for k in FINDING_FIELDS[2:9]},
        "rule": f"rule {rule.index} ({rule.hosts})" if rule else None,
        "detail": detail,
    }


LISTENED = ("LISTEN", "UNCONN")  # the states in which a socket counts as first seen listening


def _first_seen(conn: Connection) -> dict[tuple[Any, ...], datetime]:
    """When each (host, proto, port or path) first listened, among its rows and those retention removed."""
    query = (
        select(hosts.c.name, sockets.c.proto, sockets.c.local_port, sockets.c.path, func.min(sockets.c.valid_from))
        .select_from(sockets.join(hosts, hosts.c.id == sockets.c.host_ref))
        # Literal values, as the partial index ix_sockets_listening is written, so that SQLite reads only it.
        .where(sockets.c.state.in_([literal_column(f"'{state}'") for state in LISTENED]))
        .group_by(hosts.c.name, sockets.c.proto, sockets.c.local_port, sockets.c.path)
    )
    first = {(r[0], r[1], r[2], r[3]): r[4] for r in conn.execute(query)}
    p = pruned_listeners.c
    removed = select(hosts.c.name, p.proto, p.local_port, p.path, p.first_seen).join(hosts, hosts.c.id == p.host_ref)
    for name, proto, port, path, seen in conn.execute(removed):
        key = (name, proto, port, path)
        first[key] = min(first.get(key, seen), seen)
    return first
