"""The ``sockfleet`` command: hands each subcommand to the part of sockfleet that owns it.

``sockfleet agent ...`` loads only the agent, so a snapshot never pays for
the collector's imports; every other subcommand belongs to the collector.
"""

from __future__ import annotations

import sys
from importlib import import_module

USAGE = """usage: sockfleet COMMAND ...

commands:
  agent snapshot     print every socket of this host with its owning process and user
  agent run          scan every interval and stream to a collector
  collector serve    receive agents' snapshots over gRPC and store them in SQL
  collector migrate  create or upgrade the database schema
  hosts              hosts, their addresses and whether they report
  sockets            every socket on the fleet's hosts (--at TIME for the past)
  ports              listening sockets (--at TIME for the past)
  talks              who talks to whom: edges between processes on hosts
  history            a host's socket timeline
  diff               listeners and edges opened and closed between two moments
  audit              audit listeners: exposed, new, and a policy's rules (exit 1 on violations)
  demo               a collector and an agent on this machine, then open ports and who talks to whom

`sockfleet COMMAND --help` tells more.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] == "--version":
        from agent import __version__

        print(f"sockfleet {__version__}")
        return 0
    if args[0] == "agent":
        module = "agent.cli"
    else:
        try:
            import_module("collector.cli")
        except ModuleNotFoundError:
            print(f"sockfleet: error: unknown command {args[0]!r}\n{USAGE}", end="", file=sys.stderr)
            return 2
        module = "collector.cli"
    try:
        status: int = import_module(module).main(args[1:] if module == "agent.cli" else args)
    except BrokenPipeError:
        # The reader (head, less) went away: not an error for a listing command.
        sys.stderr.close()
        return 0
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
