"""The sockfleet collector: receives agents' snapshots over gRPC and keeps them in SQL."""
