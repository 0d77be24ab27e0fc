"""What changed between the state the collector acknowledged and a new scan.

The agent keeps the entries of the last acknowledged message; a delta is always
relative to that, never to something merely sent.  A heartbeat is a delta with
nothing in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sockfleet.agent.convert import Entry, Key


@dataclass(frozen=True, slots=True)
class Changes:
    added: list[tuple[Key, Entry]] = field(default_factory=list)
    removed: list[Key] = field(default_factory=list)
    changed: list[tuple[Key, Entry]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff(base: dict[Key, Entry], current: dict[Key, Entry]) -> Changes:
    """Sockets added, removed, and changed in a versioned attribute (queue lengths do not count)."""
    changes = Changes()
    for key, entry in current.items():
        old = base.get(key)
        if old is None:
            changes.added.append((key, entry))
        elif old.comparable != entry.comparable:
            changes.changed.append((key, entry))
    changes.removed.extend(key for key in base if key not in current)
    return changes
