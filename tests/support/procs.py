"""Start, stop and wait for the real processes the tests run against.

Every process runs in its own session so that a test can SIGKILL it (and its children) and
so that teardown never leaves orphans behind, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis

from tests.support import backends

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
T = TypeVar("T")


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with the last value seen.

    Exceptions raised by the predicate count as "not yet" (a server that is still starting),
    and the last one is reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:  # reported below if it never clears
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.1f}s waiting for {message}; last: {last!r}"
            )
        time.sleep(interval)


class ManagedProcess:
    """A subprocess in its own process group, with its output captured to a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd or ROOT
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal_group(signal.SIGCONT)
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children that outlived their parent (pool processes) go too.
        self.signal_group(signal.SIGKILL)
        return self.proc.returncode


class ProcessTracker:
    """Remembers every process a test started and stops them all at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def start(
        self,
        argv: Sequence[str],
        name: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        log_path = self.log_dir / f"{name}-{len(self.processes)}.log"
        # On the docker backend a server binary runs from its image (tests/support/backends.py).
        proc = backends.container_process(argv, log_path, env) or ManagedProcess(
            argv, log_path, env=env, cwd=cwd
        )
        proc.start()
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop(timeout=5)

    def logs(self) -> str:
        parts = []
        for proc in self.processes:
            tail = proc.log_text()[-4000:]
            parts.append(f"----- {proc.log_path.name} ({' '.join(proc.argv[:4])} ...)\n{tail}")
        return "\n".join(parts)


@contextlib.contextmanager
def module_processes(log_dir: Path, request: Any) -> Iterator[ProcessTracker]:
    """The tracker of a module-scoped fixture (``request``: its pytest FixtureRequest): every
    process is stopped at teardown, pass or fail, and the tail of each log is printed when a
    test of the module failed meanwhile."""
    tracker = ProcessTracker(log_dir)
    failed_before = request.session.testsfailed
    try:
        yield tracker
    finally:
        if request.session.testsfailed > failed_before:
            print(tracker.logs())
        tracker.stop_all()


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        if backends.in_container(name):
            return name  # the docker backend runs it from its image
        raise RuntimeError(f"{name} not found: install it with 'apt-get install {package}'")
    return path


class RedisServer:
    """A private redis-server on a free port; it can be killed, restarted and paused.

    With ``password`` the default user needs it; with ``tls`` = (cert, key, ca) the server
    speaks only TLS on its port (``rediss://``).
    """

    def __init__(
        self,
        tracker: ProcessTracker,
        data_dir: Path,
        port: int | None = None,
        extra_args: Iterable[str] = (),
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.tracker = tracker
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.password = password
        self.tls = tls
        self.process: ManagedProcess | None = None

    def argv(self) -> list[str]:
        argv = [
            require_binary("redis-server", "redis-server"),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
        ]  # fmt: skip
        if self.tls:
            cert, key, ca = self.tls
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                     "--tls-auth-clients", "no"]  # fmt: skip
        else:
            argv += ["--port", str(self.port)]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv + self.extra_args

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = self.tracker.start(self.argv(), f"redis-{self.port}")
        wait_until(self.ping, timeout=15, message=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"redis-server exited:\n{self.process.log_text()[-2000:]}")
        return bool(self.client().ping())

    def url(self, db: int = 0, username: str = "", password: str | None = None) -> str:
        password = self.password if password is None else password
        auth = f"{username}:{password}@" if password else ""
        if self.tls:
            query = f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls[2]}"
            return f"rediss://{auth}127.0.0.1:{self.port}/{db}{query}"
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("password", self.password)
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls[2]))
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5, **kwargs)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def restart(self) -> None:
        """Start again on the same port, as a supervisor would after a crash."""
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        self.process.pause()

    def resume(self) -> None:
        assert self.process is not None
        self.process.resume()


def celery_env(redis_server: RedisServer, **extra: str) -> dict[str, str]:
    """Environment that points the workload (and its workers) at a test's own Redis."""
    env = {
        "CELERY_BROKER_URL": redis_server.url(0),
        "CELERY_RESULT_BACKEND": redis_server.url(1),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


class CeleryWorker:
    """A real ``celery worker`` subprocess running the reference workload."""

    def __init__(
        self,
        tracker: ProcessTracker,
        env: dict[str, str],
        queues: Sequence[str] = ("default",),
        nodename: str | None = None,
        concurrency: int = 2,
        pool: str = "prefork",
        app: str = "workload.app",
        events: bool = True,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.tracker = tracker
        self.env = env
        self.queues = list(queues)
        self.nodename = nodename or f"{'-'.join(self.queues)}-{free_port()}@test"
        self.concurrency = concurrency
        self.pool = pool
        self.app = app
        self.events = events
        self.extra_args = list(extra_args)
        self.process: ManagedProcess | None = None

    def argv(self) -> list[str]:
        argv = [
            PYTHON, "-m", "celery", "-A", self.app, "worker",
            "-Q", ",".join(self.queues),
            "-n", self.nodename,
            "-c", str(self.concurrency),
            "-P", self.pool,
            "--without-gossip", "--without-mingle",
            "-l", "INFO",
        ]  # fmt: skip
        if self.events:
            argv.append("-E")
        return argv + self.extra_args

    def start(self, wait: bool = True) -> CeleryWorker:
        self.process = self.tracker.start(self.argv(), f"worker-{self.nodename}", env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if not self.process.alive():
                raise RuntimeError(f"worker exited:\n{self.process.log_text()[-3000:]}")
            return " ready." in self.process.log_text()

        wait_until(ready, timeout=timeout, interval=0.1, message=f"worker {self.nodename} ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def stop(self) -> int | None:
        """Warm shutdown (SIGTERM), which sends worker-offline."""
        assert self.process is not None
        return self.process.stop(timeout=30)

    def warm_shutdown(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the main process only, as Kubernetes or systemd stop a worker: it
        finishes the tasks it started, then sends worker-offline and exits."""
        assert self.process is not None and self.process.proc is not None
        os.kill(self.process.pid, signal.SIGTERM)
        return self.process.proc.wait(timeout=timeout)
