"""Handlers the tests register (importable by worker processes)."""
