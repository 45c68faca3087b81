"""Tests use the same private-server helpers the benchmarks use."""

from distbatch.testing import LocalCluster, RedisServer, env_with_path, free_port

__all__ = ["LocalCluster", "RedisServer", "env_with_path", "free_port"]
