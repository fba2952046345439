"""docker-compose.yml and the Dockerfile checked against the compose-spec essentials *and* against the
code they run: every ``NANOBATCH_*`` name is a real setting, every command parses with the real
``nanobatch`` CLI, exactly one beat, a scalable worker, secrets only where they are needed.

No Docker engine is needed; when a compose binary is installed, ``compose config`` validates too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from nanobatch.cli.main import app as cli_app
from nanobatch.tasks.settings import Settings
from nanobatch.workers.store.base import CLOUD_ENV, CLOUD_SECRETS

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
IMAGE = "nanobatch:latest"

TOP_LEVEL = {"version", "name", "services", "networks", "volumes", "configs", "secrets", "include"}
SERVICE_KEYS = {
    "build",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "volumes",
    "depends_on",
    "healthcheck",
    "ports",
    "expose",
    "profiles",
    "restart",
    "deploy",
    "container_name",
    "labels",
    "networks",
    "logging",
    "user",
    "working_dir",
    "stop_grace_period",
    "stop_signal",
    "secrets",
    "configs",
    "extra_hosts",
    "hostname",
    "init",
    "ulimits",
    "read_only",
    "tmpfs",
    "shm_size",
}
RESTART = {"no", "always", "on-failure", "unless-stopped"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
PORT = re.compile(r"^((\d{1,3}(\.\d{1,3}){3}):)?(\d+:)?\d+(/(tcp|udp))?$")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the `<<:` merge keys


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services that run the nanobatch image (its ENTRYPOINT is the nanobatch command)."""
    return {name: svc for name, svc in services.items() if svc.get("image") == IMAGE}


def setting_env_names() -> set[str]:
    """Every environment name Settings reads: NANOBATCH_<FIELD> plus explicit aliases (GEMINI_API_KEY)."""
    names = set()
    for name, info in Settings.model_fields.items():
        names.add(f"NANOBATCH_{name.upper()}")
        alias = info.validation_alias
        names.update(getattr(alias, "choices", []) if alias is not None else [])
    return names


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


# -- compose-spec essentials --------------------------------------------------------------------


def test_top_level_and_service_keys_are_compose_spec(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert set(compose) - TOP_LEVEL == {k for k in compose if k.startswith("x-")}
    for name, svc in services.items():
        unknown = {k for k in svc if k not in SERVICE_KEYS and not k.startswith("x-")}
        assert not unknown, f"service {name}: unknown keys {unknown}"
        assert "image" in svc or "build" in svc, f"service {name} has neither image nor build"
        assert svc.get("restart", "no") in RESTART, name
        assert isinstance(svc.get("command", []), list), f"{name}: use the exec (list) form"


def test_dependencies_volumes_ports_and_healthchecks_resolve(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for target, spec in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert spec["condition"] in CONDITIONS
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck to wait for"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith(("/", ".")) or source in declared, (
                f"{name}: volume {source} not declared"
            )
        for port in svc.get("ports", []):
            assert PORT.match(str(port)), f"{name}: bad port {port}"
        if "healthcheck" in svc:
            assert svc["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL", "NONE"}


# -- consistency with the code -------------------------------------------------------------------


def test_every_nanobatch_name_is_a_setting(services: dict[str, Any]) -> None:
    known = setting_env_names() | CLOUD_ENV  # the image store's client reads the clouds' own names
    for name, svc in ours(services).items():
        unknown = set(env_of(svc)) - known
        assert not unknown, f"service {name} sets {unknown}, which Settings does not read"
    referenced = set(INTERPOLATION.findall(COMPOSE.read_text()))
    assert {n for n in referenced if n.startswith("NANOBATCH_")} <= known
    assert referenced - known == set(), f"interpolated names that are not settings: {referenced - known}"


def _resolve(args: list[str]) -> tuple[Any, list[str], str]:
    """Walk the real typer app down the subcommand path; return the command and its own arguments.

    Duck-typed (``.commands``): recent typer vendors its own click, whose classes are not ``click``'s.
    """
    command: Any = typer.main.get_command(cli_app)
    path = ["nanobatch"]
    while hasattr(command, "commands") and args and args[0] in command.commands:
        path.append(args[0])
        command, args = command.commands[args[0]], args[1:]
    return command, args, " ".join(path)


def test_every_command_is_a_real_nanobatch_subcommand_with_valid_options(services: dict[str, Any]) -> None:
    for name, svc in ours(services).items():
        assert "entrypoint" not in svc, f"{name} bypasses the nanobatch entrypoint"
        command, rest, path = _resolve([str(a) for a in svc["command"]])
        assert not hasattr(command, "commands"), f"{name}: {svc['command']} is not a nanobatch command"
        try:  # parse exactly as `nanobatch …` would: unknown options and bad values fail here
            command.make_context(path, rest)
        except Exception as exc:  # the CLI's usage errors (click's or typer's vendored click)
            message = getattr(exc, "format_message", exc.__str__)()
            pytest.fail(f"service {name}: `{path} {' '.join(rest)}`: {message}")


def test_exactly_one_beat_and_a_scalable_worker(services: dict[str, Any]) -> None:
    commands = {name: [str(a) for a in svc.get("command", [])] for name, svc in ours(services).items()}
    beats = [name for name, cmd in commands.items() if cmd[:1] == ["beat"] or {"--beat", "-B"} & set(cmd)]
    assert beats == ["beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    workers = [name for name, cmd in commands.items() if cmd[:1] == ["worker"]]
    assert workers == ["worker"]
    worker = services["worker"]
    assert "container_name" not in worker, "container_name prevents --scale worker=N"
    assert not worker.get("ports"), "a fixed host port prevents --scale worker=N"
    assert "replicas" not in worker.get("deploy", {}), "the worker's count belongs to --scale"


def test_the_required_roles_are_wired(services: dict[str, Any]) -> None:
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for role in ("worker", "beat", "flower", "metrics"):
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["flower"]["command"][:1] == ["flower"]
    assert "0.0.0.0" in services["flower"]["command"]
    assert services["metrics"]["command"] == ["metrics", "--address", "0.0.0.0", "--port", "9808"]
    assert services["simulator"]["profiles"] == ["rehearsal"]


def test_operator_endpoints_are_published_on_loopback_only(services: dict[str, Any]) -> None:
    # Flower (basic auth over plain HTTP, can revoke tasks) and the metrics endpoint (no auth) must not
    # be reachable from the network by default; the README shows a TLS reverse proxy in front.
    for role, port in (("flower", 5555), ("metrics", 9808)):
        assert services[role]["ports"] == [f"127.0.0.1:{port}:{port}"], role


def test_secrets_reach_only_the_services_that_need_them(services: dict[str, Any]) -> None:
    with_key = {n for n, s in services.items() if {"GEMINI_API_KEY", "NANOBATCH_API_KEY"} & set(env_of(s))}
    assert with_key == {"worker"}
    auth = {
        n: env_of(s)["NANOBATCH_FLOWER_BASIC_AUTH"]
        for n, s in services.items()
        if "NANOBATCH_FLOWER_BASIC_AUTH" in env_of(s)
    }
    assert list(auth) == ["flower"]
    assert re.fullmatch(r"\$\{NANOBATCH_FLOWER_BASIC_AUTH:\?.+\}", auth["flower"]), (
        "must be required, not a literal"
    )
    assert not any(k.startswith("FLOWER_") for s in services.values() for k in env_of(s))


def test_the_default_image_store_is_the_s3_compatible_service(services: dict[str, Any]) -> None:
    worker = env_of(services["worker"])
    location = re.fullmatch(
        r"\$\{NANOBATCH_OUTPUT_DIR:-s3://([a-z0-9.-]+)/\S*\}", worker["NANOBATCH_OUTPUT_DIR"]
    )
    assert location, "workers write to the S3-compatible store by default (overridable)"
    assert worker["AWS_ENDPOINT_URL"] == "${AWS_ENDPOINT_URL:-http://minio:9000}"
    init = services["minio-init"]
    assert f"mc mb --ignore-existing store/{location.group(1)}" in " ".join(init["command"])
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert "minio" in services and not any(p.endswith(":9000") for p in services["minio"].get("ports", []))
    assert all(p.startswith("127.0.0.1:") for p in services["minio"].get("ports", []))


def test_store_credentials_are_required_and_reach_only_the_store_and_workers(
    services: dict[str, Any],
) -> None:
    holders = {n for n, s in services.items() if (CLOUD_SECRETS | {"MINIO_ROOT_PASSWORD"}) & set(env_of(s))}
    assert holders == {"worker", "minio", "minio-init"}
    for name in holders:
        env = env_of(services[name])
        for key in ("AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD"):
            if key in env:
                assert re.fullmatch(r"\$\{AWS_SECRET_ACCESS_KEY:\?.+\}", env[key]), (
                    f"{name}: {key} must be required"
                )
    # the one-shot job reads them from its environment at run time ($$), never from its command line
    assert "$$AWS_SECRET_ACCESS_KEY" in COMPOSE.read_text()


def test_dockerfile_copies_what_exists_and_enters_through_nanobatch() -> None:
    lines = [line.split() for line in DOCKERFILE.read_text().splitlines() if line.strip() and line[0] != "#"]
    for parts in (p for p in lines if p[0] == "COPY" and not p[1].startswith("--")):
        for source in parts[1:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    assert ["ENTRYPOINT", '["nanobatch"]'] in lines
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["nanobatch"] == "nanobatch.cli.main:main"


def _compose_binary() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_accepts_the_file_when_a_compose_binary_is_installed() -> None:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("no `docker compose` / `docker-compose` installed; the structural tests above still ran")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NANOBATCH_", "GEMINI_"))}
    args = [*binary, "-f", str(COMPOSE), "--profile", "rehearsal", "config", "-q"]
    store = {"AWS_ACCESS_KEY_ID": "nanobatch", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    ok = subprocess.run(
        args, env={**env, **store, "NANOBATCH_FLOWER_BASIC_AUTH": "ops:pw"}, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    # and without Flower's credentials the file refuses to render (no open Flower by accident)
    refused = subprocess.run(args, env={**env, **store}, capture_output=True, text=True)
    assert refused.returncode != 0 and "NANOBATCH_FLOWER_BASIC_AUTH" in refused.stderr
