"""Which backend runs the servers the tests talk to: local binaries (the default) or Docker.

``OBSERVATORY_TEST_BACKEND`` selects it once per test session:

- ``local`` (or unset): redis-server, prometheus and alertmanager are the local binaries,
  started by :class:`tests.support.procs.ProcessTracker` as they always were. This is what
  CI runs; nothing here imports Docker's client or touches an engine or a registry.
- ``docker``: the same fixtures and helper classes start those binaries from their images
  instead (the images ``compose/docker-compose.yml`` deploys), and the RabbitMQ fixture is
  a container. Selecting it without a reachable engine is a usage error that names why.

The container runs exactly the command line the local binary would get, on the host's
network and as the calling user, with every directory named on the command line mounted at
the same path. So ports, URLs, data directories and config files are unchanged, and
``RedisServer``, ``Prometheus`` and ``Alertmanager`` are the same objects in both backends:
the tests cannot tell, except where an operation has no container equivalent (a host
process id), and then the test skips and says so. The Docker side is
tests/support/containers.py, imported only when this backend is selected.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ENV_VAR = "OBSERVATORY_TEST_BACKEND"
LOCAL = "local"
DOCKER = "docker"
ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"

# Binary (as the local helpers name it) -> (compose service whose image runs it, entrypoint).
# The entrypoint is named so that the image's own wrapper script (user switching, defaults
# appended to the command) never changes the command line the test wrote.
CONTAINERISED: dict[str, tuple[str, list[str]]] = {
    "redis-server": ("redis", ["redis-server"]),
    "prometheus": ("prometheus", ["/bin/prometheus"]),
    "alertmanager": ("alertmanager", ["/bin/alertmanager"]),
    "prometheus-alertmanager": ("alertmanager", ["/bin/alertmanager"]),
}
# RabbitMQ is not part of the deployment, so its image is named here.
RABBITMQ_IMAGE = "rabbitmq:3.13-alpine"
LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
PROBE_TIMEOUT = 3.0


class BackendUnavailable(Exception):
    """The backend asked for cannot run here; the message says why and what to do."""


# ---------------------------------------------------------------- selection


def select_backend(
    environ: Mapping[str, str], probe: Callable[[], str | None] | None = None
) -> str:
    """``local`` or ``docker`` from ``environ``; raises :class:`BackendUnavailable`.

    ``probe`` returns None when a Docker engine answers, else the reason it does not (the
    default is :func:`probe_engine`). It runs only when ``docker`` is asked for, so the
    local backend never touches Docker.
    """
    value = environ.get(ENV_VAR, "").strip().lower() or LOCAL
    if value == LOCAL:
        return LOCAL
    if value != DOCKER:
        raise BackendUnavailable(
            f"{ENV_VAR}={value!r} is not a backend: use 'local' (the default) or 'docker'"
        )
    reason = (probe or probe_engine)()
    if reason is not None:
        raise BackendUnavailable(
            f"{ENV_VAR}=docker, but {reason}. Start Docker (see docs/testing.md), "
            f"or unset {ENV_VAR} to use the local binaries."
        )
    return DOCKER


@functools.cache
def backend() -> str:
    """The session's backend, selected once from the environment (see :func:`select_backend`)."""
    return select_backend(os.environ)


def probe_engine(timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if a Docker engine answers a ping, else a one-line reason. Never hangs.

    The engine is found as testcontainers finds it (``tc.host`` in
    ~/.testcontainers.properties, then ``DOCKER_HOST``, then the current ``docker context``,
    then docker's default socket), so the answer holds for the containers started later.
    A missing socket file is reported without any connection attempt; otherwise one ping
    through docker's own client, whose every socket operation is bounded by ``timeout``
    (testcontainers' own client would wait 60 s on a silent engine).
    """
    try:
        import docker
        from testcontainers.core.docker_client import get_docker_host
    except ImportError as exc:  # the dev extra is not installed
        return f"the Docker client is missing ({exc}; pip install -e '.[dev]')"
    host = get_docker_host()
    where = host or "unix:///var/run/docker.sock"
    if where.startswith("unix://"):
        path = where.removeprefix("unix://")
        if not os.path.exists(path):
            return f"no Docker engine: {path} does not exist"
    environment = {**os.environ, **({"DOCKER_HOST": host} if host else {})}
    try:
        client = docker.from_env(
            environment=environment,
            timeout=timeout,
            use_ssh_client=where.startswith("ssh://"),
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means "no engine here", with docker's words
        detail = " ".join(str(exc).split())[:300]
        return f"no Docker engine answers at {where} ({detail})"
    return None


# ---------------------------------------------------------------- server binaries


@dataclass(frozen=True)
class ContainerSpec:
    """How to run one local command line as a container, changing nothing it can see."""

    image: str
    entrypoint: list[str]
    command: list[str]
    mounts: list[str]
    user: str
    environment: dict[str, str] = field(default_factory=dict)


@functools.cache
def compose_image(service: str) -> str:
    """The image the deployment runs ``service`` from (defined once, in the compose file)."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return str(services[service]["image"])


def in_container(binary: str) -> bool:
    """True when the docker backend runs ``binary`` from an image instead of the local one."""
    return os.path.basename(binary) in CONTAINERISED and backend() == DOCKER


def mounts_for(argv: Sequence[str]) -> list[str]:
    """The directories to mount (each at its own path) so the command finds its files.

    Every absolute path on the command line, alone or after ``=``, contributes the nearest
    directory that exists (a data directory not created yet gets its parent); nested ones
    are covered by their ancestor. The file system root and its direct children are never
    mounted.
    """
    found: set[Path] = set()
    for arg in argv[1:]:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if not value.startswith("/"):
            continue
        path = Path(value)
        while not path.is_dir() and path != path.parent:
            path = path.parent
        if len(path.parts) > 2:
            found.add(path)
    mounts: list[Path] = []
    for path in sorted(found, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(m) for m in mounts):
            mounts.append(path)
    return [str(m) for m in mounts]


def container_spec(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ContainerSpec:
    """The container that runs ``argv`` (a containerised binary) with nothing else changed."""
    service, entrypoint = CONTAINERISED[os.path.basename(argv[0])]
    return ContainerSpec(
        image=compose_image(service),
        entrypoint=list(entrypoint),
        command=list(argv[1:]),
        mounts=mounts_for(argv),
        user=f"{os.getuid()}:{os.getgid()}",
        environment=dict(env or {}),
    )


def container_process(argv: Sequence[str], log_path: Path, env: dict[str, str] | None) -> Any:
    """A not-yet-started ContainerProcess for ``argv`` on the docker backend, else None.

    Called by ProcessTracker.start for every process; on the local backend it only looks
    up the binary's name, so local runs are unchanged.
    """
    if not in_container(argv[0]):
        return None
    from tests.support.containers import ContainerProcess

    return ContainerProcess(argv, log_path, container_spec(argv, env))


# ---------------------------------------------------------------- RabbitMQ


def amqp_reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def rabbitmq() -> Iterator[str]:
    """An AMQP URL: a RabbitMQ container (docker), or the broker on 127.0.0.1:5672 (local).

    On the local backend the test skips, with the reason, when no broker listens there:
    RabbitMQ is heavy and needs root, so the local backend never starts one.
    """
    if backend() == DOCKER:
        from tests.support.containers import rabbitmq_container

        with rabbitmq_container(RABBITMQ_IMAGE) as url:
            yield url
        return
    if not amqp_reachable():
        pytest.skip(
            "no RabbitMQ on 127.0.0.1:5672 (apt-get install rabbitmq-server, "
            f"or {ENV_VAR}=docker to run it in a container)"
        )
    yield LOCAL_AMQP_URL


def describe() -> str:
    """One line for pytest's header: which backend runs the servers."""
    if backend() == LOCAL:
        return f"test backend: local binaries ({ENV_VAR}=docker for containers, docs/testing.md)"
    images = sorted({compose_image(service) for service, _ in CONTAINERISED.values()})
    return f"test backend: docker ({', '.join([*images, RABBITMQ_IMAGE])})"
