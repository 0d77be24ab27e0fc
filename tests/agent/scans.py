"""Scans made by hand for the spool's tests: listeners on given ports, added as the agent adds them."""

from __future__ import annotations

from sockfleet.agent import convert
from sockfleet.agent.delta import diff
from sockfleet.agent.spool import Spool
from sockfleet.v1 import fleet_pb2 as pb


def entry(port: int, process: str = "svc") -> tuple[convert.Key, convert.Entry]:
    key: convert.Key = (1, pb.PROTO_TCP, pb.FAMILY_INET, pb.SOCK_TYPE_STREAM, port, "0.0.0.0", port, "", 0, "")
    comparable = convert.Comparable(pb.STATE_LISTEN, 0, 0, "root", 100, process, process, 1)
    return key, convert.Entry(comparable, 0, 0)


def scan(*ports: int, owner: str = "svc") -> dict[convert.Key, convert.Entry]:
    return dict(entry(port, owner) for port in ports)


def add(spool: Spool, current: dict[convert.Key, convert.Entry], at: int) -> None:
    changes = diff(spool.tail, current) if spool.tail is not None else None
    spool.add(current, changes, at, pb.Coverage(namespaces_scanned=[1]))


def ports(state: dict[bytes, pb.Socket]) -> set[int]:
    return {sock.key.local_port for sock in state.values()}
