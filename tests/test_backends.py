"""The test backends (tests/support/backends.py): which one is selected, and what it runs.

The selector and the container translation are tested everywhere. The container backend
itself needs a Docker engine; its tests skip with "no Docker engine" where there is none
(CI), and run against a real engine where there is one.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import redis

from tests.support import backends
from tests.support.backends import DOCKER, ENV_VAR, LOCAL, BackendUnavailable, select_backend
from tests.support.procs import PYTHON, ROOT, ManagedProcess, ProcessTracker, RedisServer
from tests.support.prom import Prometheus


def never_probed() -> str | None:
    raise AssertionError("the local backend must not look for a Docker engine")


# ---------------------------------------------------------------- selection


@pytest.mark.parametrize("value", [None, "", "local", " LOCAL "])
def test_unset_or_local_selects_the_local_binaries_without_probing(value: str | None) -> None:
    environ = {} if value is None else {ENV_VAR: value}
    assert select_backend(environ, probe=never_probed) == LOCAL


def test_an_unknown_backend_is_an_error_naming_the_choices() -> None:
    with pytest.raises(BackendUnavailable, match="'podman' is not a backend: use 'local'"):
        select_backend({ENV_VAR: "podman"}, probe=never_probed)


def test_docker_without_an_engine_is_an_error_that_names_the_reason() -> None:
    def no_engine() -> str:
        return "no Docker engine: /var/run/docker.sock does not exist"

    with pytest.raises(BackendUnavailable) as info:
        select_backend({ENV_VAR: "docker"}, probe=no_engine)
    message = str(info.value)
    assert message.startswith(f"{ENV_VAR}=docker, but no Docker engine: /var/run/docker.sock")
    assert f"unset {ENV_VAR}" in message


def test_docker_with_an_engine_selects_the_container_backend() -> None:
    assert select_backend({ENV_VAR: "docker"}, probe=lambda: None) == DOCKER


def test_pytest_refuses_to_start_on_docker_without_an_engine(tmp_path: Path) -> None:
    """The conftest wiring: one usage error before any test runs, not a wall of failures."""
    env = {
        **os.environ,
        ENV_VAR: "docker",
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
        "DOCKER_CONFIG": str(tmp_path),  # no docker context of the user's
    }
    result = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_backends.py::test_docker_with_an_engine_selects_the_container_backend"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert f"{ENV_VAR}=docker, but no Docker engine: {tmp_path}/no-engine.sock does not exist" in (
        result.stderr
    )


# ---------------------------------------------------------------- the engine probe


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket path must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="obs-") as path:
        yield Path(path)


@pytest.fixture
def docker_host(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> Path:
    """DOCKER_HOST points at a socket path in ``short_dir``; the user's context is ignored."""
    sock = short_dir / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    monkeypatch.setenv("DOCKER_CONFIG", str(short_dir))
    return sock


def test_probe_names_a_missing_socket_without_connecting(docker_host: Path) -> None:
    assert backends.probe_engine() == f"no Docker engine: {docker_host} does not exist"


@pytest.mark.timeout(30)
def test_probe_gives_up_on_a_socket_that_never_answers(docker_host: Path) -> None:
    """A listening socket nobody serves (a hung engine): a reason within the timeout."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(docker_host))
        silent.listen(8)
        reason = backends.probe_engine(timeout=0.5)
    assert reason is not None
    assert reason.startswith(f"no Docker engine answers at unix://{docker_host} (")
    assert "timed out" in reason.lower()


class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers the two requests a docker client's ping makes, as an engine would."""

    daemon_threads = True

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"ApiVersion": "1.43"}) if self.path == "/version" else "OK"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
            self.server.requests.append(self.path)  # type: ignore[attr-defined]

        def log_message(self, format: str, *args: object) -> None:
            pass

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), self.Handler)
        self.requests: list[str] = []


def test_probe_accepts_an_engine_that_answers_its_ping(docker_host: Path) -> None:
    with FakeEngine(docker_host) as engine:
        thread = threading.Thread(target=engine.serve_forever, daemon=True)
        thread.start()
        try:
            assert backends.probe_engine() is None
        finally:
            engine.shutdown()
    assert any(path.endswith("/_ping") for path in engine.requests), engine.requests


# ---------------------------------------------------------------- what the docker backend runs


def test_redis_command_line_becomes_the_same_command_in_the_deployments_image(
    procs: ProcessTracker, tmp_path: Path
) -> None:
    server = RedisServer(procs, tmp_path / "redis", password="pw")
    server.data_dir.mkdir()  # as start() does before it builds the command line
    argv = server.argv()
    spec = backends.container_spec(argv)
    assert spec.image == backends.compose_image("redis") == "redis:7.2-alpine"
    assert spec.entrypoint == ["redis-server"]
    assert spec.command == argv[1:]  # same port, bind address, --dir, password
    assert spec.mounts == [str(tmp_path / "redis")]
    assert spec.user == f"{os.getuid()}:{os.getgid()}"


def test_mounts_cover_every_path_on_the_command_line_once(tmp_path: Path) -> None:
    data = tmp_path / "prometheus"
    certs = tmp_path.parent / f"{tmp_path.name}-certs"
    data.mkdir()
    certs.mkdir()
    (data / "prometheus.yml").write_text("")
    argv = [
        "/usr/bin/prometheus",
        f"--config.file={data / 'prometheus.yml'}",
        f"--storage.tsdb.path={data / 'tsdb'}",  # not created yet: its parent
        "--web.listen-address=127.0.0.1:9090",
        "--tls-cert-file", str(certs / "cert.pem"),
        "--dir", "/",  # never the root
        "--cluster.listen-address=",
    ]  # fmt: skip
    assert backends.mounts_for(argv) == sorted([str(data), str(certs)])


def test_nested_directories_are_mounted_through_their_ancestor(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    argv = ["redis-server", "--dir", str(tmp_path / "a" / "b"), f"--x={tmp_path / 'a'}"]
    assert backends.mounts_for(argv) == [str(tmp_path / "a")]


def test_local_backend_starts_the_local_binary(redis_server: RedisServer) -> None:
    """Unset, the fixtures are exactly what they were: a redis-server process of ours."""
    if backends.backend() != LOCAL:
        pytest.skip(f"this run uses the {backends.backend()} backend")
    assert type(redis_server.process) is ManagedProcess
    assert backends.container_process(redis_server.argv(), Path("unused.log"), None) is None


def test_docker_backend_runs_servers_from_images_and_says_which_operations_it_lacks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No engine needed: the container is described, not started."""
    monkeypatch.setattr(backends, "backend", lambda: DOCKER)
    monkeypatch.setattr("shutil.which", lambda name: None)  # a laptop without the binaries
    server = RedisServer(ProcessTracker(tmp_path / "logs"), tmp_path / "redis")
    argv = server.argv()
    assert argv[0] == "redis-server"
    process = backends.container_process(argv, tmp_path / "redis.log", None)
    assert process is not None and process.spec.image == "redis:7.2-alpine"
    with pytest.raises(pytest.skip.Exception, match="no host process id"):
        _ = process.pid
    with pytest.raises(RuntimeError, match="celery not found"):
        from tests.support.procs import require_binary

        require_binary("celery", "celery")  # only the images' binaries are stood in for


# ---------------------------------------------------------------- with a real engine


@pytest.fixture
def docker_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    reason = backends.probe_engine()
    if reason is not None:
        pytest.skip(
            reason if reason.startswith("no Docker engine") else f"no Docker engine: {reason}"
        )
    monkeypatch.setenv(ENV_VAR, DOCKER)
    backends.backend.cache_clear()
    yield
    backends.backend.cache_clear()


def test_the_selector_finds_a_real_engine(docker_backend: None) -> None:
    assert select_backend(os.environ) == DOCKER


def test_redis_in_a_container_is_killed_restarted_paused_and_resumed(
    docker_backend: None, procs: ProcessTracker, tmp_path: Path
) -> None:
    from tests.support.containers import ContainerProcess

    server = RedisServer(procs, tmp_path / "redis").start()
    assert isinstance(server.process, ContainerProcess)
    server.client().set("k", "v")
    server.kill()
    assert server.process is not None and not server.process.alive()
    with pytest.raises(redis.ConnectionError):
        server.client().ping()
    server.restart()
    assert server.client().get("k") is None  # a new server, no persistence: as locally
    server.pause()
    with pytest.raises(redis.TimeoutError):
        server.client(socket_timeout=1).ping()
    server.resume()
    assert server.client().ping()


def test_prometheus_in_a_container_scrapes_a_target_on_the_host(
    docker_backend: None, procs: ProcessTracker, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Host networking: a container reaches 127.0.0.1 ports of the host, as a process does."""
    from tests.support.exporter import ExporterProcess
    from tests.support.procs import wait_until

    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    prometheus = Prometheus(procs, tmp_path / "prometheus", [f"127.0.0.1:{exporter.port}"]).start()
    wait_until(prometheus.targets_up, timeout=60, message="the exporter scraped from a container")
