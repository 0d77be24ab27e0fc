"""The edges view again, written with joins: the same edges, in seconds rather than hours on a large fleet.

The first version looked each socket's listeners up in correlated subqueries, which
neither SQLite nor PostgreSQL can run fast over hundreds of thousands of sockets.
This one reads the listeners once and joins them, as `sockfleet talks` does.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from importlib import import_module

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The rules of collector/talks.py over the sockets open now.  Addresses written ::ffff:a.b.c.d
# count as a.b.c.d; loopback stays on the host; the side with a listener (exact address or
# wildcard, same namespace) serves; else the side not on an ephemeral port; else the lower port.
# Both ends of a connection count once; client ports are folded away.
EDGES = """
WITH holding AS (
  SELECT CASE WHEN address LIKE '::ffff:%.%' THEN substr(address, 8) ELSE address END AS address,
         host_ref, netns
  FROM host_addresses
  WHERE valid_to IS NULL AND address NOT LIKE '127.%' AND address NOT LIKE '::ffff:127.%' AND address <> '::1'
), held AS (
  SELECT h.address, h.host_ref, min(h.netns) AS netns
  FROM holding h
  JOIN (SELECT address, min(host_ref) AS host_ref FROM holding GROUP BY address) f
    ON f.address = h.address AND f.host_ref = h.host_ref
  GROUP BY h.address, h.host_ref
), listeners AS (
  SELECT host_ref, netns, proto, local_port,
         CASE WHEN local_address LIKE '::ffff:%.%' THEN substr(local_address, 8) ELSE local_address END AS laddr,
         min(process) AS process
  FROM sockets
  WHERE valid_to IS NULL AND state IN ('LISTEN', 'UNCONN') AND proto <> 'unix'
    AND (state = 'LISTEN' OR proto = 'udp')
  GROUP BY host_ref, netns, proto, local_port,
           CASE WHEN local_address LIKE '::ffff:%.%' THEN substr(local_address, 8) ELSE local_address END
), inet AS (
  SELECT host_ref, netns, proto, process, local_port, remote_port, valid_from,
         CASE WHEN local_address LIKE '::ffff:%.%' THEN substr(local_address, 8) ELSE local_address END AS laddr,
         CASE WHEN remote_address LIKE '::ffff:%.%' THEN substr(remote_address, 8) ELSE remote_address END AS raddr
  FROM sockets
  WHERE valid_to IS NULL AND proto <> 'unix' AND remote_address IS NOT NULL AND state NOT IN ('TIME_WAIT', 'LISTEN')
), ends AS (
  SELECT i.*,
         CASE WHEN i.raddr LIKE '127.%' OR i.raddr = '::1' THEN i.host_ref ELSE held.host_ref END AS peer_ref,
         CASE WHEN i.raddr LIKE '127.%' OR i.raddr = '::1' THEN i.netns ELSE held.netns END AS peer_netns
  FROM inet i LEFT JOIN held ON held.address = i.raddr
), judged AS (
  SELECT e.*, ll.process AS local_process, rl.process AS remote_process,
         CASE WHEN ll.host_ref IS NOT NULL AND rl.host_ref IS NULL THEN 1
              WHEN rl.host_ref IS NOT NULL AND ll.host_ref IS NULL THEN 0
              WHEN (e.local_port BETWEEN 32768 AND 60999) <> (e.remote_port BETWEEN 32768 AND 60999)
                THEN CASE WHEN e.remote_port BETWEEN 32768 AND 60999 THEN 1 ELSE 0 END
              WHEN e.local_port < e.remote_port THEN 1 ELSE 0 END AS server_side,
         CASE WHEN (ll.host_ref IS NULL) <> (rl.host_ref IS NULL) THEN 3
              WHEN (e.local_port BETWEEN 32768 AND 60999) <> (e.remote_port BETWEEN 32768 AND 60999) THEN 2
              ELSE 1 END AS evidence
  FROM ends e
  -- A socket may find two listeners (exact and wildcard): the copies meet again below, and count once.
  LEFT JOIN listeners ll ON ll.host_ref = e.host_ref AND ll.netns = e.netns AND ll.proto = e.proto
    AND ll.local_port = e.local_port AND (ll.laddr = e.laddr OR ll.laddr IN ('0.0.0.0', '::'))
  LEFT JOIN listeners rl ON rl.host_ref = e.peer_ref AND rl.netns = e.peer_netns AND rl.proto = e.proto
    AND rl.local_port = e.remote_port AND (rl.laddr = e.raddr OR rl.laddr IN ('0.0.0.0', '::'))
), halves AS (
  SELECT proto, evidence, valid_from, server_side,
         CASE WHEN server_side = 1 THEN raddr ELSE laddr END AS c_addr,
         CASE WHEN server_side = 1 THEN remote_port ELSE local_port END AS c_port,
         CASE WHEN server_side = 1 THEN laddr ELSE raddr END AS s_addr,
         CASE WHEN server_side = 1 THEN local_port ELSE remote_port END AS s_port,
         CASE WHEN server_side = 1 THEN peer_ref ELSE host_ref END AS client_ref,
         CASE WHEN server_side = 1 THEN NULL ELSE process END AS client_process,
         CASE WHEN server_side = 1 THEN host_ref ELSE peer_ref END AS server_ref,
         CASE WHEN server_side = 1 THEN coalesce(local_process, process) END AS own_process,
         remote_process
  FROM judged
), connections AS (
  SELECT proto, c_addr, c_port, s_addr, s_port, max(client_ref) AS client_ref,
         max(client_process) AS client_process, max(server_ref) AS server_ref,
         coalesce(max(own_process), max(remote_process)) AS server_process,
         max(evidence) AS evidence, min(valid_from) AS first_seen
  FROM halves GROUP BY proto, c_addr, c_port, s_addr, s_port
), keyed AS (
  SELECT c.*, CASE WHEN c.client_ref IS NULL THEN c.c_addr END AS client_address,
         CASE WHEN c.server_ref IS NULL THEN c.s_addr END AS outside_server
  FROM connections c
), inet_edges AS (
  SELECT k.proto, ch.name AS client_host, k.client_address, k.client_process, sh.name AS server_host,
         min(k.s_addr) AS server_address, k.s_port AS server_port, k.server_process,
         count(*) AS connections, min(k.first_seen) AS first_seen,
         CASE max(k.evidence) WHEN 3 THEN 'listener' WHEN 2 THEN 'ephemeral port' ELSE 'lower port' END AS direction
  FROM keyed k LEFT JOIN hosts ch ON ch.id = k.client_ref LEFT JOIN hosts sh ON sh.id = k.server_ref
  GROUP BY k.proto, ch.name, k.client_address, k.client_process, sh.name, k.outside_server, k.s_port,
           k.server_process
), unix AS (
  -- Both ends of a Unix pair share a key (its two inodes); the end bound to a path serves, else the
  -- lower pid, else the lower inode.  Numbered so, the pair needs no join.
  SELECT host_ref, process, pid, path, inode,
         CASE WHEN inode < peer_inode THEN inode ELSE peer_inode END AS low,
         CASE WHEN inode < peer_inode THEN peer_inode ELSE inode END AS high,
         row_number() OVER (
           PARTITION BY host_ref, CASE WHEN inode < peer_inode THEN inode ELSE peer_inode END,
                        CASE WHEN inode < peer_inode THEN peer_inode ELSE inode END
           ORDER BY CASE WHEN path IS NULL THEN 1 ELSE 0 END, coalesce(pid, 0), inode) AS rank,
         valid_from
  FROM sockets WHERE valid_to IS NULL AND proto = 'unix' AND peer_inode IS NOT NULL AND peer_inode <> 0
), unix_pairs AS (
  SELECT host_ref, max(CASE WHEN rank = 1 THEN path END) AS server_path,
         max(CASE WHEN rank = 1 THEN process END) AS server_process,
         max(CASE WHEN rank = 2 THEN process END) AS client_process,
         CASE WHEN count(path) = 1 THEN 'unix path' ELSE 'unix pair' END AS direction,
         min(valid_from) AS first_seen
  FROM unix
  GROUP BY host_ref, low, high
  HAVING count(DISTINCT inode) = 2 AND NOT (count(pid) = 2 AND min(pid) = max(pid))
), unix_edges AS (
  SELECT 'unix' AS proto, h.name AS client_host, CAST(NULL AS VARCHAR(64)) AS client_address, p.client_process,
         h.name AS server_host, p.server_path AS server_address, CAST(NULL AS INTEGER) AS server_port,
         p.server_process, count(*) AS connections, min(p.first_seen) AS first_seen, p.direction
  FROM unix_pairs p JOIN hosts h ON h.id = p.host_ref
  GROUP BY h.name, p.client_process, p.server_path, p.server_process, p.direction
)
SELECT proto, client_host, client_address, client_process, server_host, server_address, server_port,
       server_process, connections, first_seen, direction FROM inet_edges
UNION ALL
SELECT proto, client_host, client_address, client_process, server_host, server_address, server_port,
       server_process, connections, first_seen, direction FROM unix_edges
"""


def upgrade() -> None:
    op.execute("DROP VIEW edges")
    op.execute(f"CREATE VIEW edges AS {EDGES}")


def downgrade() -> None:
    op.execute("DROP VIEW edges")
    op.execute(f"CREATE VIEW edges AS {import_module('sockfleet.migrations.versions.0004_edges_view').EDGES}")
