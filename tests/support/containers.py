"""The docker backend's processes: a server binary run from its image, and a RabbitMQ broker.

Imported only when ``OBSERVATORY_TEST_BACKEND=docker`` (tests/support/backends.py), so the
local backend never needs an engine. Containers are started with testcontainers, which also
starts its reaper (Ryuk): containers of a test session that died are removed all the same.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
from docker.errors import APIError, NotFound
from kombu import Connection
from testcontainers.core.container import DockerContainer

from tests.support.backends import ContainerSpec
from tests.support.procs import ManagedProcess, wait_until

# docker reports "killed by signal N" as exit code 128 + N; Popen as -N.
SIGNAL_EXIT_BASE = 128
# A frozen (paused) container still counts as alive, as a SIGSTOPped process does.
ALIVE = ("created", "running", "paused", "restarting")
DOCKER_ERRORS = (APIError, NotFound)


class ContainerProcess(ManagedProcess):
    """A ManagedProcess whose program runs in a container (host network, same argv).

    kill is ``docker kill`` (SIGKILL), pause/resume are ``docker pause``/``unpause`` (the
    cgroup freezer: the port stays open and nothing answers, as with SIGSTOP), stop is
    ``docker stop`` and removes the container. A server's restart starts a new container
    with the same command line, as the local backend starts a new process.
    """

    def __init__(self, argv: Sequence[str], log_path: Path, spec: ContainerSpec) -> None:
        super().__init__(argv, log_path)
        self.spec = spec
        self.container: DockerContainer | None = None
        self.returncode: int | None = None

    def start(self) -> ContainerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        container = DockerContainer(self.spec.image).with_command(self.spec.command)
        for path in self.spec.mounts:
            container.with_volume_mapping(path, path, "rw")
        for key, value in self.spec.environment.items():
            container.with_env(key, value)
        # network="host" (not network_mode) so testcontainers keeps it as given.
        container.with_kwargs(entrypoint=self.spec.entrypoint, user=self.spec.user, network="host")
        self.container = container.start()
        return self

    def _wrapped(self) -> Any:
        return self.container.get_wrapped_container() if self.container else None

    def _status(self) -> str:
        wrapped = self._wrapped()
        if wrapped is None:
            return "removed"
        try:
            wrapped.reload()
        except NotFound:
            return "removed"
        return str(wrapped.status)

    @property
    def pid(self) -> NoReturn:  # type: ignore[override]
        pytest.skip(
            f"{Path(self.argv[0]).name} runs in a container on the docker backend: "
            "it has no host process id to signal (run with the local backend)"
        )

    def alive(self) -> bool:
        return self._status() in ALIVE

    def log_text(self) -> str:
        wrapped = self._wrapped()
        if wrapped is not None:
            with contextlib.suppress(*DOCKER_ERRORS):
                return wrapped.logs().decode(errors="replace")
        return super().log_text()

    def signal_group(self, sig: int) -> None:
        wrapped = self._wrapped()
        if wrapped is None:
            return
        with contextlib.suppress(*DOCKER_ERRORS):  # like ProcessLookupError: already gone
            if sig == signal.SIGSTOP:
                wrapped.pause()
            elif sig == signal.SIGCONT:
                if self._status() == "paused":
                    wrapped.unpause()
            else:
                self._kill(wrapped, sig)

    def _kill(self, wrapped: Any, sig: int) -> None:
        try:
            wrapped.kill(signal=int(sig))
        except APIError:
            # Some engines refuse to signal a paused container; a SIGSTOPped process takes
            # SIGKILL, so thaw it and signal again.
            if self._status() != "paused":
                raise
            wrapped.unpause()
            wrapped.kill(signal=int(sig))

    def kill(self) -> None:
        """``docker kill``: SIGKILL, as a crash would; waits until the container exited."""
        wrapped = self._wrapped()
        if wrapped is None or self._status() not in ALIVE:
            return
        self._kill(wrapped, signal.SIGKILL)
        self.returncode = _returncode(wrapped.wait(timeout=10)["StatusCode"])

    def pause(self) -> None:
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> int | None:
        """``docker stop`` (SIGTERM, SIGKILL after ``timeout``), keep the log, remove it."""
        wrapped = self._wrapped()
        if wrapped is None:
            return self.returncode
        with contextlib.suppress(*DOCKER_ERRORS):
            if self._status() == "paused":
                wrapped.unpause()
            if self._status() in ALIVE:
                wrapped.stop(timeout=math.ceil(timeout))
            self.returncode = _returncode(wrapped.wait(timeout=timeout + 10)["StatusCode"])
        self.log_path.write_text(self.log_text())
        with contextlib.suppress(*DOCKER_ERRORS):
            assert self.container is not None
            self.container.stop()  # removes the container and closes the client
        self.container = None
        return self.returncode


def _returncode(status: int) -> int:
    return -(status - SIGNAL_EXIT_BASE) if status > SIGNAL_EXIT_BASE else status


def _amqp_ready(url: str) -> bool:
    with Connection(url, connect_timeout=2) as connection:
        connection.connect()
        return True


@contextlib.contextmanager
def rabbitmq_container(image: str) -> Iterator[str]:
    """A RabbitMQ broker on a mapped port; yields its AMQP URL once it accepts a login.

    A non-guest user: RabbitMQ lets ``guest`` log in only from its own loopback, and
    connections through a mapped port do not come from there.
    """
    user, password = "observatory", "observatory-test"
    container = (
        DockerContainer(image)
        .with_exposed_ports(5672)
        .with_env("RABBITMQ_DEFAULT_USER", user)
        .with_env("RABBITMQ_DEFAULT_PASS", password)
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        host = "127.0.0.1" if host == "localhost" else host  # the mapped port is IPv4
        url = f"amqp://{user}:{password}@{host}:{container.get_exposed_port(5672)}//"
        wait_until(lambda: _amqp_ready(url), timeout=120, interval=0.5, message="RabbitMQ up")
        yield url
    finally:
        container.stop()
