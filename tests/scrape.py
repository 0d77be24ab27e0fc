"""The tests' client of ``--metrics-listen``: a free port for it, ``/metrics`` parsed as Prometheus does, and
``/healthz``."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    """The status and body of ``GET path`` on the loopback ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def scrape(port: int) -> dict[str, float]:
    """Every sample of ``/metrics``, by name and labels as Prometheus writes them: ``name{label="value"}``."""
    status, body = get(port, "/metrics")
    assert status == 200, body
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def metric(port: int, name: str) -> float:
    """One sample's value; 0 when the endpoint does not report it, or does not answer, yet."""
    try:
        return scrape(port).get(name, 0.0)
    except urllib.error.URLError:
        return 0.0
