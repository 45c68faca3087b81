"""Entry points that deployments run, and example handlers."""
