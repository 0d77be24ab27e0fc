"""The sockfleet agent: enumerates every local socket with its owner.

The agent never imports SQLAlchemy or the collector; it shares only the wire
schema (``sockfleet.v1``) with the rest of sockfleet.
"""

__version__ = "0.1.0"
