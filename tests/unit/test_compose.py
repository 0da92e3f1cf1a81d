"""docker-compose.yml is valid and says what the code's compose profile says.

There is no Docker engine here: ``docker-compose config`` (Debian's 1.29,
installed by ``make setup``) resolves and validates the file without one. The
resolved file is then held against ``settings.PROFILES["compose"]`` and
``airflow_env.airflow_env()``, so renaming a service or a port on either side
fails here instead of on the first ``docker compose up``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from riverdelta.airflow import env as airflow_env
from riverdelta.config import settings as settings_mod
from riverdelta.config.settings import PROJECT_ROOT, Settings, load_settings

pytestmark = pytest.mark.unit

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
DOCKERFILE = PROJECT_ROOT / "docker" / "Dockerfile"
KAFKA_SERVICES = ("kafka-1", "kafka-2", "kafka-3")
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
# A whole value that is one ${VAR}, ${VAR:?msg}, ${VAR:-default} reference.
VAR_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[?-][^}]*)?\}$")
# References compose interpolates ($$ is a literal dollar for the container's shell).
INTERPOLATED = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    # Fail, not skip: a missing binary must not turn this file into a silent pass.
    assert found, "docker-compose is not installed: run `make setup` (scripts/setup.sh installs it)"
    return found


def compose(
    *args: str, compose_file: Path = COMPOSE, env_file: Path = ENV_EXAMPLE, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``docker-compose`` on the repository as project directory, run from ``cwd``.

    The environment is cleared: a POSTGRES_PASSWORD or .env of the caller's must
    neither fill a gap in .env.example nor change what is resolved.
    """
    return subprocess.run(
        [
            _docker_compose(),
            "--env-file",
            str(env_file),
            "-f",
            str(compose_file),
            "--project-directory",
            str(PROJECT_ROOT),
            *args,
        ],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc = compose("config", cwd=tmp_path_factory.mktemp("compose"))
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def services(resolved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resolved["services"]


@pytest.fixture
def compose_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """Settings as the containers see them: RIVERDELTA_ENV=compose, nothing overridden.

    conftest.py sets test ports and a local master for the session; those must
    not leak into the profile. ``settings()`` is cached, so it is cleared on both
    sides for airflow_env().
    """
    for key in list(os.environ):
        if key.startswith("RIVERDELTA_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RIVERDELTA_ENV", "compose")
    monkeypatch.setenv("RIVERDELTA_HOME", str(tmp_path / "home"))
    settings_mod.settings.cache_clear()
    yield load_settings()
    settings_mod.settings.cache_clear()


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def _hostport(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"//{url}")
    assert parsed.hostname and parsed.port, f"{url} has no host:port"
    return parsed.hostname, parsed.port


def _option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def _one_shots(services: dict[str, dict[str, Any]]) -> set[str]:
    return {
        name
        for svc in services.values()
        for name, dep in (svc.get("depends_on") or {}).items()
        if dep.get("condition") == "service_completed_successfully"
    }


# --------------------------------------------------------------------------- validity


def test_config_is_valid_with_the_example_env(tmp_path: Path) -> None:
    proc = compose("config", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_an_undefined_required_variable_fails_config(tmp_path: Path) -> None:
    """The `config -q` check bites: a service needing an unset ${VAR:?} is refused."""
    data = yaml.safe_load(COMPOSE.read_text())
    data["services"]["canary"] = {
        "image": "postgres:17.5",
        "environment": {"CANARY_PASSWORD": "${RIVERDELTA_CANARY_UNSET:?set it in .env}"},
    }
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = compose("config", "-q", compose_file=broken, cwd=tmp_path)
    assert proc.returncode != 0
    assert "RIVERDELTA_CANARY_UNSET" in proc.stderr


def test_every_secret_in_env_example_is_required(tmp_path: Path) -> None:
    """Dropping a secret from the env file stops compose instead of running without it."""
    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(
            line + "\n"
            for line in ENV_EXAMPLE.read_text().splitlines()
            if not line.startswith("POSTGRES_PASSWORD=")
        )
    )
    proc = compose("config", "-q", env_file=env_file, cwd=tmp_path)
    assert proc.returncode != 0
    assert "POSTGRES_PASSWORD" in proc.stderr


def test_env_example_documents_every_variable() -> None:
    # Comments may mention ${VAR} syntax; only what compose interpolates counts.
    code = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    used = set(INTERPOLATED.findall(code))
    lines = ENV_EXAMPLE.read_text().splitlines()
    documented = {}
    for i, line in enumerate(lines):
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line):
            name = line.split("=", 1)[0]
            documented[name] = i > 0 and lines[i - 1].startswith("#")
    assert used - documented.keys() == set(), "variables missing from .env.example"
    assert documented.keys() - used == set(), ".env.example has variables compose never reads"
    assert all(documented.values()), f"undocumented (no comment above): {documented}"


# --------------------------------------------------------------------------- the code's view


def test_kafka_bootstrap_are_the_brokers(
    compose_settings: Settings, services: dict[str, dict[str, Any]]
) -> None:
    hosts = []
    for address in compose_settings.kafka_bootstrap.split(","):
        host, port = _hostport(address)
        hosts.append(host)
        assert host in services, f"bootstrap {address}: no service {host}"
        env = _env(services[host])
        assert f"//{host}:{port}" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert re.search(rf"://[^,]*:{port}(,|$)", env["KAFKA_LISTENERS"])
    assert sorted(hosts) == sorted(KAFKA_SERVICES)


def test_kafka_is_one_kraft_quorum_with_the_profile_replication(
    compose_settings: Settings, services: dict[str, dict[str, Any]]
) -> None:
    rf = str(compose_settings.kafka_replication_factor)
    min_isr = str(compose_settings.kafka_min_insync_replicas)
    node_ids = {}
    for name in KAFKA_SERVICES:
        env = _env(services[name])
        node_ids[name] = env["KAFKA_NODE_ID"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == rf
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == min_isr
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == rf
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == rf
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == min_isr
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["CLUSTER_ID"] == _env(services[KAFKA_SERVICES[0]])["CLUSTER_ID"]
    voters = _env(services[KAFKA_SERVICES[0]])["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    expected = ",".join(f"{node_ids[n]}@{n}:9093" for n in KAFKA_SERVICES)
    assert voters == expected
    assert len(set(node_ids.values())) == len(KAFKA_SERVICES)
    assert int(rf) <= len(KAFKA_SERVICES)


def test_spark_master_url_is_the_master_service(
    compose_settings: Settings, services: dict[str, dict[str, Any]]
) -> None:
    assert compose_settings.spark_master.startswith("spark://")
    host, port = _hostport(compose_settings.spark_master)
    assert host == "spark-master"
    command = services[host]["command"]
    assert "org.apache.spark.deploy.master.Master" in command
    assert _option(command, "--host") == host
    assert int(_option(command, "--port")) == port
    workers = [n for n in services if n.startswith("spark-worker-")]
    assert len(workers) == 2
    for name in workers:
        assert services[name]["command"][-1] == compose_settings.spark_master
        assert services[name]["image"] == services[host]["image"]


def test_driver_host_is_reachable_by_executors(services: dict[str, dict[str, Any]]) -> None:
    """Tasks (and so stream drivers) run in the scheduler; executors dial its hostname."""
    scheduler = services["airflow-scheduler"]
    assert _env(scheduler)["SPARK_LOCAL_HOSTNAME"] == scheduler["hostname"]
    assert _env(scheduler)["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_lake_is_in_the_bucket_minio_init_creates(
    compose_settings: Settings, services: dict[str, dict[str, Any]]
) -> None:
    lake = urlparse(compose_settings.lake)
    assert lake.scheme == "s3a"
    init = services["minio-init"]
    assert _env(init)["RIVERDELTA_BUCKET"] == lake.netloc
    script = " ".join(init["command"])
    assert re.search(r"mc mb --ignore-existing \"local/\$+RIVERDELTA_BUCKET\"", script), script
    assert "minio:9000" in script
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"


def test_s3_endpoint_is_minio(
    compose_settings: Settings, services: dict[str, dict[str, Any]]
) -> None:
    assert compose_settings.s3_endpoint
    host, port = _hostport(compose_settings.s3_endpoint)
    assert host == "minio"
    assert _option(services[host]["command"], "--address") == f":{port}"
    # Everything that reads or writes the lake has the key pair minio-init creates.
    init_env = _env(services["minio-init"])
    for name in (*AIRFLOW_SERVICES, "spark-master", "spark-worker-1", "spark-worker-2"):
        env = _env(services[name])
        assert env["AWS_ACCESS_KEY_ID"] == init_env["S3_ACCESS_KEY"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == init_env["S3_SECRET_KEY"], name


def test_airflow_url_is_the_api_server(
    compose_settings: Settings, services: dict[str, dict[str, Any]]
) -> None:
    host, port = _hostport(compose_settings.airflow_url)
    assert host == "airflow-apiserver"
    command = services[host]["command"]
    assert command[0] == "api-server"
    assert int(_option(command, "--port")) == port


def test_airflow_env_matches_airflow_env_under_compose(
    compose_settings: Settings, services: dict[str, dict[str, Any]]
) -> None:
    expected = airflow_env.airflow_env(base={})
    json_keys = ("AIRFLOW_CONN_KAFKA_DEFAULT", "AIRFLOW_CONN_SPARK_DEFAULT")
    same_keys = (
        "RIVERDELTA_ENV",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__CORE__LOAD_EXAMPLES",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    )
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = _env(services[name])
        for key in json_keys:
            assert json.loads(env[key]) == json.loads(expected[key]), (name, key)
        for key in same_keys:
            assert env[key] == expected[key], (name, key)
        db = urlparse(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        pg = _env(services["postgres"])
        assert (db.hostname, db.username, db.password, db.path.lstrip("/")) == (
            "postgres",
            pg["POSTGRES_USER"],
            pg["POSTGRES_PASSWORD"],
            pg["POSTGRES_DB"],
        )


def test_airflow_home_is_where_the_code_looks(
    monkeypatch: pytest.MonkeyPatch, services: dict[str, dict[str, Any]]
) -> None:
    """The image's RIVERDELTA_HOME gives settings().airflow_home = the containers' AIRFLOW_HOME,
    so riverdelta's API client finds the password file airflow-init writes."""
    home = re.search(r"RIVERDELTA_HOME=(\S+)", DOCKERFILE.read_text())
    assert home, "docker/Dockerfile sets no RIVERDELTA_HOME"
    monkeypatch.setenv("RIVERDELTA_ENV", "compose")
    monkeypatch.setenv("RIVERDELTA_HOME", home.group(1))
    airflow_home = load_settings().airflow_home
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = _env(services[name])
        assert Path(env["AIRFLOW_HOME"]) == airflow_home, name
        assert Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]) == (
            airflow_home / "simple_auth_manager_passwords.json"
        )
        mounts = [str(v).split(":")[1] for v in services[name]["volumes"]]
        for sub in ("dags", "include", "spark_apps", "expectations", "state"):
            assert f"/opt/riverdelta/{sub}" in mounts, (name, sub)


# --------------------------------------------------------------------------- hygiene


def test_every_image_is_pinned_or_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            assert build["dockerfile"] == "docker/Dockerfile", name
            continue
        image = svc.get("image", "")
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: {image!r}"
        assert re.search(r"\d", tag), f"{name}: {image!r} is not a version"
    base = re.search(r"^ARG AIRFLOW_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert base and re.fullmatch(r"apache/airflow:\d+\.\d+\.\d+-python3\.11", base.group(1))


def test_every_service_has_a_healthcheck_or_is_a_one_shot(
    services: dict[str, dict[str, Any]],
) -> None:
    one_shots = _one_shots(services)
    assert one_shots == {"airflow-init", "minio-init"}
    for name, svc in services.items():
        if name in one_shots:
            assert svc.get("restart") == "no", name
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        for dep, spec in (svc.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dep in one_shots else "service_healthy"
            assert spec["condition"] == wanted, (name, dep)


def _environments(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, value in raw.items():
        if name.startswith("x-") and isinstance(value, dict):
            # Anchored blocks: a bare env map, or a service template with one.
            found.append((name, value.get("environment", value)))
    for name, svc in raw["services"].items():
        found.append((name, svc.get("environment") or {}))
    return found


def _literal_url_password(value: str) -> bool:
    """True if a URL in ``value`` carries a password that is not a ${VAR} reference."""
    bare = re.sub(r"\$\{[^}]*\}", "", value)
    return re.search(r"://[^/@\s]*:[^/@\s]+@", bare) is not None


def test_no_secret_literal_in_the_file() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    checked = 0
    for where, env in _environments(raw):
        assert isinstance(env, dict), f"{where}: use a mapping for environment"
        for key, value in env.items():
            # *_FILE names a path to a secret, not the secret.
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                checked += 1
                assert VAR_REF.match(str(value)), f"{where}.{key} is a literal, not ${{VAR}}"
            # Credentials inside URLs (the database URL) must be references too.
            assert not _literal_url_password(str(value)), f"{where}.{key}"
    assert checked >= 8  # the detector sees the secrets at all


def test_the_url_rule_bites() -> None:
    assert _literal_url_password("postgresql://airflow:hunter2@postgres/airflow")
    assert not _literal_url_password(
        "postgresql://${POSTGRES_USER:?set it}:${POSTGRES_PASSWORD:?set it}@postgres/airflow"
    )
    assert not VAR_REF.match("hunter2")
