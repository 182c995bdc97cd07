"""docker-compose.yml and the Dockerfiles are wired as docs/api.md says (parsed, not run)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack import processes as P

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ("worker", "worker-cpu")
DISTRIBUTED = ("postgres", "s3", "api-dist", "worker-gpus")  # profile distributed


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


def instructions(text: str, keyword: str) -> list[str]:
    """The arguments of each ``keyword`` instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split(None, 1)[1] for line in joined.splitlines()
            if line.strip().upper().startswith(keyword + " ")]


def exec_form(text: str, keyword: str) -> list[str]:
    args = instructions(text, keyword)[-1]
    if keyword == "HEALTHCHECK":
        args = args.split("CMD", 1)[1]
    parsed: list[str] = json.loads(args)
    return parsed


def stack_command(start: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The argv ``stack.processes.start_api/start_worker`` would run, captured, not run."""
    captured: list[list[str]] = []

    def fake_spawn(name: str, args: list[str], log_path: Path, *a: Any, **k: Any) -> Any:
        captured.append(args)
        raise RuntimeError("captured")

    monkeypatch.setattr(P, "_spawn", fake_spawn)
    with pytest.raises(RuntimeError):
        if start == "api":
            P.start_api({}, "0.0.0.0", 8000, tmp_path)
        else:
            P.start_worker({}, "worker1", "prune", tmp_path)
    return ["python", *captured[0][1:]]


def test_services_and_persistence(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "worker-cpu", *DISTRIBUTED}
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "redis-data:/data" in redis["volumes"]
    assert set(compose["volumes"]) == {"job-data", "redis-data", "pg-data", "s3-data"}


def test_every_service_has_a_healthcheck_and_waits_for_redis(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        if name not in ("redis", "postgres", "s3"):
            healthy = {"condition": "service_healthy"}
            waits = ("redis", "postgres", "s3") if name in DISTRIBUTED else ("redis",)
            assert service["depends_on"] == dict.fromkeys(waits, healthy), name
            assert service["environment"]["PRUNER_REDIS_URL"] == "redis://redis:6379/0"


def test_shared_job_data_and_read_only_mnist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", *WORKERS):
        assert "job-data:/data" in services[name]["volumes"], name
        assert services[name]["environment"]["PRUNER_DATA_DIR"] == "/data", name
        assert services[name]["environment"]["PRUNER_QUEUE_NAME"] == "prune", name
    for name in WORKERS:
        mnist = [v for v in services[name]["volumes"] if ":/datasets" in v]
        assert len(mnist) == 1 and mnist[0].endswith(":/datasets:ro"), name
        assert services[name]["environment"]["PRUNER_MNIST_ROOT"] == "/datasets"
    assert not any(":/datasets" in v for v in services["api"]["volumes"])


def test_gpu_worker_and_cpu_variant(compose: dict[str, Any]) -> None:
    gpu, cpu = compose["services"]["worker"], compose["services"]["worker-cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["PRUNER_WORKER_DEVICE"] == "cuda:0"
    assert "profiles" not in gpu
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert cpu["environment"]["PRUNER_WORKER_DEVICE"] == "cpu"
    assert cpu["command"] == gpu["command"]


def test_networks_keep_workers_and_redis_internal(compose: dict[str, Any]) -> None:
    assert compose["networks"]["backend"] == {"internal": True}
    services = compose["services"]
    for name in ("redis", *WORKERS, "postgres", "s3", "worker-gpus"):
        assert services[name]["networks"] == ["backend"], name
        assert "ports" not in services[name], name
    assert services["api"]["networks"] == ["backend", "public"]
    assert services["api"]["ports"] == ["${API_PORT:-8000}:8000"]


def test_images_install_the_right_extras() -> None:
    api, worker = dockerfile("api.Dockerfile"), dockerfile("worker.Dockerfile")
    api_runs = " ".join(instructions(api, "RUN"))
    assert "pip install '.[distributed]'" in api_runs  # the drivers, not the worker extra
    code = [line for line in api.lower().splitlines() if not line.lstrip().startswith("#")]
    assert not any("torch" in line for line in code)
    assert not any("worker" in c for c in instructions(api, "COPY"))  # no engine code in the API
    assert "pip install '.[worker,distributed]'" in " ".join(instructions(worker, "RUN"))
    for text in (api, worker):
        assert instructions(text, "FROM") == ["python:3.11-slim"]
        assert instructions(text, "USER") == ["pruner"]  # not root
        assert instructions(text, "HEALTHCHECK")


def test_commands_are_the_ones_python_m_stack_runs(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api_cmd = stack_command("api", monkeypatch, tmp_path)
    worker_cmd = stack_command("worker", monkeypatch, tmp_path)
    worker_cmd[worker_cmd.index("-n") + 1] = "worker1@%h"  # Celery expands %h to the host
    services = compose["services"]
    assert services["api"]["command"] == api_cmd
    assert exec_form(dockerfile("api.Dockerfile"), "CMD") == api_cmd
    for name in WORKERS:
        assert services[name]["command"] == worker_cmd, name
    assert exec_form(dockerfile("worker.Dockerfile"), "CMD") == worker_cmd
    # Health checks match between compose and the images.
    assert services["api"]["healthcheck"]["test"][1:] == exec_form(
        dockerfile("api.Dockerfile"), "HEALTHCHECK")
    assert services["worker"]["healthcheck"]["test"][1:] == exec_form(
        dockerfile("worker.Dockerfile"), "HEALTHCHECK")
    assert "worker1@" in shlex.join(services["worker"]["healthcheck"]["test"])


def test_docker_context_leaves_out_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "var"} <= set(ignored)


def test_distributed_profile_shares_no_volume_and_pins_one_worker_per_gpu(
    compose: dict[str, Any]
) -> None:
    from core.settings import Settings
    from stack.gpu_workers import worker_envs

    services = compose["services"]
    for name in DISTRIBUTED:
        assert services[name]["profiles"] == ["distributed"], name
    api, gpus = services["api-dist"], services["worker-gpus"]
    assert "volumes" not in api  # nothing shared with the workers...
    assert [v for v in gpus["volumes"] if not v.endswith(":/datasets:ro")] == []  # ...but MNIST
    for service in (api, gpus):
        env = service["environment"]
        assert env["PRUNER_DATABASE_URL"].startswith("postgresql://pruner:")
        assert env["PRUNER_DATABASE_URL"].endswith("@postgres:5432/pruner")
        assert env["PRUNER_BLOB_URL"] == "s3://pruner/jobs"
        assert env["PRUNER_S3_ENDPOINT_URL"] == "http://s3:8333"
        values = {k.removeprefix("PRUNER_").lower(): v for k, v in env.items()}
        Settings.of(**values)  # every value is a valid setting
        assert set(service["depends_on"]) == {"redis", "postgres", "s3"}
    # One container per GPU host (--scale worker-gpus=N); in it, one worker per GPU, pinned.
    assert gpus["command"] == ["python", "-m", "stack.gpu_workers", "--gpus", "${WORKER_GPUS:-1}"]
    (devices,) = gpus["deploy"]["resources"]["reservations"]["devices"]
    assert devices["count"] == "${WORKER_GPUS:-1}" and devices["capabilities"] == ["gpu"]
    pinned = worker_envs(Settings.of(data_dir=Path("/tmp/pruner")), 3)
    assert [env["PRUNER_WORKER_DEVICE"] for _, env in pinned] == ["cuda:0", "cuda:1", "cuda:2"]
    assert [name.split("@")[0] for name, _ in pinned] == ["gpu0", "gpu1", "gpu2"]
    assert len({env["PRUNER_DATA_DIR"] for _, env in pinned}) == 3  # a scratch dir each
    assert "'gpu0@'" in shlex.join(gpus["healthcheck"]["test"])  # the first worker's heartbeat


def test_documented_distributed_command_starts_no_shared_volume_service(
    compose: dict[str, Any]
) -> None:
    """The command in the compose file's header (and docs/operations.md) names its services;
    with their dependencies that is redis plus the distributed set, so neither the single-host
    api (on job-data, also on port 8000) nor the job-data worker comes up beside them."""
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "--profile distributed up" in line)
    text = " ".join(line.removeprefix("#").split(" # ", 1)[0] for line in lines[at:at + 2])
    command = text.split("--profile distributed up", 1)[1].replace("\\", " ")
    words = shlex.split(command)
    named = [w for w in words if not w.startswith("-") and "=" not in w]
    assert named == ["api-dist", "worker-gpus"]
    assert "--scale" in words and "worker-gpus=2" in words
    services, started, todo = compose["services"], set(), list(named)
    while todo:
        name = todo.pop()
        if name not in started:
            started.add(name)
            todo.extend(services[name].get("depends_on", {}))
    assert started == {"redis", *DISTRIBUTED}
    for name in started:
        assert all("job-data" not in str(v) for v in services[name].get("volumes", [])), name
    assert "--scale worker-gpus=2 api-dist worker-gpus" in (
        ROOT / "docs" / "operations.md").read_text()
