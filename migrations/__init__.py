"""Alembic environment and revisions: the only way a sockfleet database schema is made."""
