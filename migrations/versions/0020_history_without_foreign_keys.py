"""On PostgreSQL the history tables no longer check each new row's host against ``hosts``.

Revision ID: 0020
Revises: 0019

Every row of ``sockets``, ``flows``, ``observations`` and ``closed_flows`` carries ``host_ref``, and a foreign
key made PostgreSQL look the host up in ``hosts`` for each row written (a query of its own per row, by a
sequential scan while ``hosts`` is small): a new host's 1,000-socket snapshot (about 2,000 rows with its flows)
cost the server 30 ms with the checks and 18 ms without.  Only the collector writes these rows, with the
``host_ref`` its hello made, and nothing deletes hosts, so the checks guarded nothing the collector does not.
``hosts``, ``host_state``, ``host_addresses``, ``credentials`` and ``pruned_listeners`` keep theirs (a row per
host or per change of address).  SQLite keeps every key: its check is one look-up in ``hosts``'s own b-tree,
and dropping a key there rebuilds the whole table.
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

HISTORY = ("sockets", "flows", "observations", "closed_flows")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in HISTORY:
        op.drop_constraint(f"fk_{table}_host_ref_hosts", table, type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in HISTORY:
        op.create_foreign_key(f"fk_{table}_host_ref_hosts", table, "hosts", ["host_ref"], ["id"], ondelete="CASCADE")
