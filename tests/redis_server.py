"""Tests use the same private-server helper the benchmarks use."""

from distbatch.testing import RedisServer, env_with_path, free_port

__all__ = ["RedisServer", "env_with_path", "free_port"]
