"""distbatch benchmarks: `python -m bench all [--quick]`. Each starts its own redis-server."""
