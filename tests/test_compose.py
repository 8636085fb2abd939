"""The team stack's docker-compose.yml, checked the way CI can without a container engine: Debian's
docker-compose 1.29 validates and interpolates it (`config`), and the result is compared with what
the README's "The team stack" section promises and with the `smolforge` command the workers run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

from smolforge.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"


def _stack_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## The team stack\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, "README.md has no '## The team stack' section"
    return match.group(1)


def _readme_ports() -> dict[str, set[int]]:
    """Service -> published ports, from the section's table rows (`| `name` | 4200 | ... |`)."""
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|", _stack_section(), re.M)
    assert rows, "the team stack section has no service table"
    return {name: {int(p) for p in re.findall(r"\d+", ports)} for name, ports in rows}


@pytest.fixture(scope="module")
def compose_config() -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's as root; apt-get install docker-compose)")
    # .env.example stands in for a user's .env: every variable the file requires must be in it
    result = subprocess.run(
        [binary, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose config refused docker-compose.yml:\n{result.stderr}"
    assert "is not set" not in result.stderr, f"a variable is missing from .env.example:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _host_ports(service: dict) -> set[int]:
    """Published host ports, from `config`'s normalised `127.0.0.1:4200:4200/tcp` strings."""
    return {int(str(p).split("/")[0].split(":")[-2]) for p in service.get("ports", [])}


def test_compose_file_validates_and_names_the_readme_services(compose_config):
    services = compose_config["services"]
    readme = _readme_ports()
    assert sorted(readme) == sorted(services), "README's team stack table and docker-compose.yml list different services"
    for name, ports in readme.items():
        assert _host_ports(services[name]) == ports, f"service {name!r}: README says ports {sorted(ports)}"


def test_services_wait_for_healthy_dependencies(compose_config):
    services = compose_config["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = "service_healthy" if "healthcheck" in services[dependency] else "service_completed_successfully"
            assert condition["condition"] == expected, f"{name} waits on {dependency} with {condition}"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_env_example_variables_are_documented():
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", _stack_section()))
    variables = re.findall(r"^([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M)
    assert variables, ".env.example sets no variable"
    assert not sorted(set(variables) - documented), "README's team stack section does not explain these .env variables"


@pytest.mark.parametrize("service, pool", [("worker-cpu", "cpu"), ("worker-gpu", "gpu")])
def test_worker_command_is_a_real_smolforge_worker_call(compose_config, service, pool):
    """The image's entrypoint is `smolforge`, so the service's command is its arguments; they must
    parse against the CLI itself (options, types and choices), and name the service's pool."""
    command = compose_config["services"][service]["command"]
    assert command[0] == "worker", f"{service} runs `smolforge {' '.join(command)}`"
    cli = typer.main.get_command(app)
    assert "worker" in cli.commands, "smolforge has no `worker` command (docker-compose.yml's workers run it)"
    worker = cli.commands["worker"]
    ctx = worker.make_context("worker", list(command[1:]))
    chosen = ctx.params["pool"]
    assert getattr(chosen, "value", chosen) == pool


def test_deploy_command_is_a_real_smolforge_call(compose_config):
    command = compose_config["services"]["deploy"]["command"]
    cli = typer.main.get_command(app)
    assert command[0] in cli.commands, f"smolforge has no `{command[0]}` command (docker-compose.yml's deploy runs it)"
    cli.commands[command[0]].make_context(command[0], list(command[1:]))
