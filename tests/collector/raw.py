"""Raw messages on a collector's stream, without an agent: for tests of what the collector refuses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from sockfleet.v1 import fleet_pb2 as pb
from tests.collector import fleet

STREAM = "/sockfleet.v1.Collector/Stream"


def stream(port: int, messages: list[bytes]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Send raw messages; the status, its details and trailing metadata (OK when every message was taken)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call = channel.stream_stream(
            STREAM, request_serializer=lambda b: b, response_deserializer=pb.CollectorMessage.FromString
        )
        try:
            for _ in call(iter(messages), timeout=30):
                pass
        except grpc.RpcError as exc:
            metadata: Any = exc.trailing_metadata() or ()
            return exc.code(), str(exc.details()), {str(k): str(v) for k, v in metadata}
    return grpc.StatusCode.OK, "", {}


def hello(name: str, change: Callable[[pb.Hello], object] | None = None) -> bytes:
    message = fleet.hello(name)
    if change is not None:
        change(message)
    return pb.AgentMessage(hello=message).SerializeToString()


def snapshot(seq: int = 1, epoch: int = 1, change: Callable[[pb.Snapshot], object] | None = None) -> bytes:
    message = fleet.snapshot(seq, datetime.now(UTC).replace(tzinfo=None), [fleet.tcp_listener(80)], epoch=epoch)
    if change is not None:
        change(message)
    return pb.AgentMessage(snapshot=message).SerializeToString()
