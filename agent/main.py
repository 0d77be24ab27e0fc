"""The ``sockfleet`` command: hands each subcommand to the part of sockfleet that owns it.

``sockfleet agent ...`` loads only the agent, so a snapshot never pays for
the collector's imports; every other subcommand belongs to the collector.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

USAGE = """usage: sockfleet COMMAND ...

commands:
  agent snapshot      print every socket of this host with its owning process and user
  agent run           scan every interval and stream to a collector
  collector serve     receive agents' snapshots over gRPC and store them in SQL
  collector enroll    issue a host's agent token (printed once)
  collector revoke    revoke a host's agent token; its open streams end
  collector rename    give a host another name
  collector tokens    the agent tokens issued, and when each was last used
  collector migrate   create or upgrade the database schema
  collector prune     remove history that ended before a horizon
  collector status    the database: schema revision, retention horizon, hosts reporting
  hosts               hosts, their addresses and whether they report
  sockets             every socket on the fleet's hosts (--at TIME for the past)
  ports               listening sockets (--at TIME for the past)
  talks               who talks to whom: edges between processes on hosts
  history             a host's socket timeline
  diff                listeners and edges opened and closed between two moments
  audit               audit listeners: exposed, new, a policy's rules, hosts not seen (exit 1 or 3)
  web                 a read-only web page: the map of who talks to whom, diff, ports, audit, hosts
  web passwd          add a user to the web page's password file
  demo                a collector and an agent on this machine, then open ports and who talks to whom

`sockfleet COMMAND --help` tells more; --debug shows tracebacks and gRPC's own messages.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] == "--version":
        from sockfleet.agent import __version__

        print(f"sockfleet {__version__}")
        return 0
    if "--debug" not in args:
        # gRPC's core writes its own lines to standard error (connection failures, TLS handshakes): sockfleet
        # says what they mean in one line of its own.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    module = "sockfleet.agent.cli" if args[0] == "agent" else "sockfleet.collector.cli"
    try:
        status: int = import_module(module).main(args[1:] if module == "sockfleet.agent.cli" else args)
    except BrokenPipeError:
        # The reader (head, less) went away: not an error for a listing command.
        sys.stderr.close()
        return 0
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
