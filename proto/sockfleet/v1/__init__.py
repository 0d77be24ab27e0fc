"""The sockfleet wire schema, version 1: generated from fleet.proto by proto/generate.py."""
