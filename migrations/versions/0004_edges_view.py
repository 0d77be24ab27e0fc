"""The edges view: who talks to whom now, folded as `sockfleet talks` folds it.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The same rules as collector/talks.py, over the sockets open now.  Addresses written
# ::ffff:a.b.c.d count as a.b.c.d; loopback stays on the host; the side with a listener
# (exact address or wildcard, same namespace) serves; else the ephemeral range, then the
# lower port.  Both ends of a connection count once; client ports are folded away.
EDGES = """
WITH norm AS (
  SELECT s.host_ref, s.netns, s.proto, s.state, s.process, s.local_port, s.remote_port, s.valid_from,
         CASE WHEN s.local_address LIKE '::ffff:%.%' THEN substr(s.local_address, 8)
              ELSE s.local_address END AS laddr,
         CASE WHEN s.remote_address LIKE '::ffff:%.%' THEN substr(s.remote_address, 8)
              ELSE s.remote_address END AS raddr
  FROM sockets s WHERE s.valid_to IS NULL AND s.proto IN ('tcp', 'udp')
), listening AS (
  SELECT host_ref, netns, proto, local_port, laddr, process FROM norm
  WHERE state = 'LISTEN' OR (proto = 'udp' AND state = 'UNCONN')
), addrs AS (
  SELECT host_ref, netns,
         CASE WHEN address LIKE '::ffff:%.%' THEN substr(address, 8) ELSE address END AS address
  FROM host_addresses WHERE valid_to IS NULL AND address NOT LIKE '127.%' AND address <> '::1'
), ends AS (
  SELECT c.*,
         CASE WHEN c.raddr LIKE '127.%' OR c.raddr = '::1' THEN c.host_ref
              ELSE (SELECT min(a.host_ref) FROM addrs a WHERE a.address = c.raddr) END AS peer_ref,
         CASE WHEN c.raddr LIKE '127.%' OR c.raddr = '::1' THEN c.netns
              ELSE (SELECT min(a.netns) FROM addrs a WHERE a.address = c.raddr) END AS peer_netns
  FROM norm c WHERE c.raddr IS NOT NULL AND c.state NOT IN ('TIME_WAIT', 'LISTEN')
), judged AS (
  SELECT e.*,
         (SELECT min(l.process) FROM listening l WHERE l.host_ref = e.host_ref AND l.netns = e.netns
            AND l.proto = e.proto AND l.local_port = e.local_port
            AND (l.laddr = e.laddr OR l.laddr IN ('0.0.0.0', '::'))) AS local_process,
         (SELECT count(*) FROM listening l WHERE l.host_ref = e.host_ref AND l.netns = e.netns
            AND l.proto = e.proto AND l.local_port = e.local_port
            AND (l.laddr = e.laddr OR l.laddr IN ('0.0.0.0', '::'))) AS local_listens,
         (SELECT min(l.process) FROM listening l WHERE l.host_ref = e.peer_ref AND l.netns = e.peer_netns
            AND l.proto = e.proto AND l.local_port = e.remote_port
            AND (l.laddr = e.raddr OR l.laddr IN ('0.0.0.0', '::'))) AS remote_process,
         (SELECT count(*) FROM listening l WHERE l.host_ref = e.peer_ref AND l.netns = e.peer_netns
            AND l.proto = e.proto AND l.local_port = e.remote_port
            AND (l.laddr = e.raddr OR l.laddr IN ('0.0.0.0', '::'))) AS remote_listens,
         CASE WHEN e.local_port BETWEEN 32768 AND 60999 THEN 1 ELSE 0 END AS local_ephemeral,
         CASE WHEN e.remote_port BETWEEN 32768 AND 60999 THEN 1 ELSE 0 END AS remote_ephemeral
  FROM ends e
), directed AS (
  SELECT j.*,
         CASE WHEN j.local_listens > 0 AND j.remote_listens = 0 THEN 1
              WHEN j.remote_listens > 0 AND j.local_listens = 0 THEN 0
              WHEN j.local_ephemeral <> j.remote_ephemeral THEN j.remote_ephemeral
              WHEN j.local_port < j.remote_port THEN 1 ELSE 0 END AS server_side,
         CASE WHEN (j.local_listens > 0 AND j.remote_listens = 0) OR (j.remote_listens > 0 AND j.local_listens = 0)
              THEN 3 WHEN j.local_ephemeral <> j.remote_ephemeral THEN 2 ELSE 1 END AS evidence
  FROM judged j
), halves AS (
  SELECT proto, evidence, valid_from,
         CASE WHEN server_side = 1 THEN raddr ELSE laddr END AS c_addr,
         CASE WHEN server_side = 1 THEN remote_port ELSE local_port END AS c_port,
         CASE WHEN server_side = 1 THEN laddr ELSE raddr END AS s_addr,
         CASE WHEN server_side = 1 THEN local_port ELSE remote_port END AS s_port,
         CASE WHEN server_side = 1 THEN peer_ref ELSE host_ref END AS client_ref,
         CASE WHEN server_side = 1 THEN NULL ELSE process END AS client_process,
         CASE WHEN server_side = 1 THEN host_ref ELSE peer_ref END AS server_ref,
         CASE WHEN server_side = 1 THEN coalesce(local_process, process) ELSE remote_process END AS server_process
  FROM directed
), connections AS (
  SELECT proto, c_addr, c_port, s_addr, s_port, max(client_ref) AS client_ref, max(client_process) AS client_process,
         max(server_ref) AS server_ref, max(server_process) AS server_process, max(evidence) AS evidence,
         min(valid_from) AS first_seen
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
), unix_pairs AS (
  SELECT u.host_ref, u.path AS server_path, u.process AS server_process, v.process AS client_process,
         CASE WHEN (u.path IS NULL) = (v.path IS NULL) THEN 'unix pair' ELSE 'unix path' END AS direction,
         CASE WHEN u.valid_from < v.valid_from THEN u.valid_from ELSE v.valid_from END AS first_seen
  FROM sockets u JOIN sockets v ON v.host_ref = u.host_ref AND v.inode = u.peer_inode AND v.peer_inode = u.inode
  WHERE u.valid_to IS NULL AND v.valid_to IS NULL AND u.proto = 'unix' AND v.proto = 'unix'
    AND NOT (u.pid IS NOT NULL AND u.pid = v.pid)
    AND ((u.path IS NOT NULL AND v.path IS NULL)
         OR ((u.path IS NULL) = (v.path IS NULL)
             AND (coalesce(u.pid, 0) < coalesce(v.pid, 0)
                  OR (coalesce(u.pid, 0) = coalesce(v.pid, 0) AND u.inode < v.inode))))
), unix_edges AS (
  SELECT 'unix' AS proto, h.name AS client_host, CAST(NULL AS VARCHAR(64)) AS client_address, p.client_process,
         h.name AS server_host,
         p.server_path AS server_address, CAST(NULL AS INTEGER) AS server_port, p.server_process,
         count(*) AS connections,
         min(p.first_seen) AS first_seen, p.direction
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
    op.execute(f"CREATE VIEW edges AS {EDGES}")


def downgrade() -> None:
    op.execute("DROP VIEW edges")
