"""docker-compose.yml and the entry points it names (no Docker engine here: parse and resolve)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import click
import yaml

from distbatch.cli import main as cli

from .redis_server import env_with_path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _resolve_command(command: list[str]) -> None:
    if command[:2] == ["python", "-m"]:
        module = command[2]
        spec = importlib.util.find_spec(module)
        assert spec and spec.origin, f"{module} is not importable"
        assert 'if __name__ == "__main__":' in Path(spec.origin).read_text(), module
        if module.startswith("workers.") and module != "workers.producer":
            sub = module.split(".")[1]
            assert sub in cli.commands  # the module forwards to this click command
            ctx = click.Context(cli)
            cli.commands[sub].parse_args(ctx, list(command[3:]))  # flags exist and parse
    elif command[0] == "distbatch":
        assert command[1] in cli.commands
    else:
        assert command[0] == "redis-server"


def test_every_service_runs_a_real_entry_point() -> None:
    services = COMPOSE["services"]
    assert {"redis", "sweeper", "worker", "producer", "serve"} <= set(services)
    for name, svc in services.items():
        _resolve_command(svc["command"])
        if name != "redis":
            assert svc["image"] == "distbatch:latest" and svc["build"] == "."
            assert svc["environment"]["DISTBATCH_REDIS_URL"] == "redis://redis:6379/0"
            assert "redis" in svc["depends_on"]


def test_redis_keeps_an_append_only_file_and_workers_scale() -> None:
    redis_svc = COMPOSE["services"]["redis"]
    assert "--appendonly" in redis_svc["command"] and "yes" in redis_svc["command"]
    assert redis_svc["volumes"]
    worker = COMPOSE["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N works
    assert worker["environment"]["DISTBATCH_HANDLERS"] == "workers.handlers"


def test_metrics_are_scrapable_with_a_token() -> None:
    services = COMPOSE["services"]
    assert services["serve"]["ports"] == ["8000:8000"]  # /metrics of the namespace
    for name in ("worker", "sweeper"):
        command = services[name]["command"]
        assert command[command.index("--metrics-port") + 1] == "9100"
        assert services[name]["expose"] == ["9100"]
        tokens = services[name]["environment"]["DISTBATCH_API_TOKENS"]
        assert tokens.startswith("${DISTBATCH_API_TOKENS:?")
    scrape = yaml.safe_load((ROOT / "docs" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"distbatch-namespace", "distbatch-processes"}


def test_serve_listens_on_all_interfaces_only_with_tokens() -> None:
    serve = COMPOSE["services"]["serve"]
    assert serve["ports"] == ["8000:8000"] and "--insecure-no-auth" not in serve["command"]
    assert serve["environment"]["DISTBATCH_API_TOKENS"].startswith("${DISTBATCH_API_TOKENS:?")


def test_dockerfile_installs_the_package_the_services_use() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for needed in ("COPY distbatch", "COPY workers", "pip install", "serve"):
        assert needed in text


def test_entry_point_modules_answer_help() -> None:
    for module in ("workers.worker", "workers.sweeper", "workers.serve"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], env=env_with_path(),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "--redis-url" in out.stdout
