"""Wire additions stay compatible both ways: a collector built before ``closed`` (connections that closed
between scans) reads a newer agent's messages, and a newer collector reads an older agent's."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from sockfleet.v1 import fleet_pb2 as pb


def older_delta_class() -> Any:
    """``Delta`` as the schema was before it carried ``closed`` (and coverage before ``events_unseen``)."""
    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    kept = []
    for message in file.message_type:
        if message.name in ("Closings", "ClosedFlow"):
            continue
        fields = [f for f in message.field if f.name not in ("closed", "events_unseen")]
        del message.field[:]
        message.field.extend(fields)
        kept.append(message)
    del file.message_type[:]
    file.message_type.extend(kept)
    del file.service[:]
    file.name = "sockfleet/v1/fleet_before_closed.proto"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sockfleet.v1.Delta"))


def test_an_older_collector_reads_a_newer_agents_delta() -> None:
    delta = pb.Delta(epoch=1, seq=2, base_seq=1, taken_at_us=5)
    delta.added.add(key=pb.SocketKey(netns=1, proto=pb.PROTO_TCP, local_port=80), state=pb.STATE_LISTEN)
    delta.closed.flows.add(netns=1, proto=pb.PROTO_TCP, role="s", local_address="10.0.0.1", local_port=80,
                           remote_address="10.0.0.2", connections=3, short_lived=3)  # fmt: skip
    delta.coverage.events_unseen.add(netns="7", reason="not permitted")
    older = older_delta_class().FromString(delta.SerializeToString())
    assert (older.seq, older.base_seq, older.added[0].key.local_port) == (2, 1, 80)
    assert not hasattr(older, "closed")


def test_a_newer_collector_reads_an_older_agents_delta() -> None:
    older = older_delta_class()(epoch=1, seq=2, base_seq=1, taken_at_us=5)
    newer = pb.Delta.FromString(older.SerializeToString())
    assert newer.seq == 2 and not newer.HasField("closed") and not newer.coverage.events_unseen
