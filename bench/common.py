"""What the benchmarks share: a private redis-server, processes, machine facts, JSON output."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "out"))  # where results go
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@contextlib.contextmanager
def process(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, stopped (group and all) when the block ends."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def private_redis(*extra: str) -> Iterator[int]:
    """A throw-away redis-server on a free port (never the one on 6379); yields the port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as data:
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            data,
            *extra,
        ]
        with process(argv, Path(data) / "redis.log"):
            wait_for(
                lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True,
                10,
                "redis-server",
            )
            yield port


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def http_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(
        json.dumps({"machine": machine(), "command": " ".join(sys.argv), **payload}, indent=2)
    )
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, also readable in a terminal."""
    cells = [[str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


class Progress:
    """One status line on stderr, rewritten in place (plain lines when not a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 5.0):
            return
        self._last = now
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{self.label}: {text}")
        else:
            sys.stderr.write(f"{self.label}: {text}\n")
        sys.stderr.flush()

    def done(self, text: str) -> None:
        self.update(text, force=True)
        if self.tty:
            sys.stderr.write("\n")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process in a process group (a worker and its pool)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def load_average() -> float:
    """The 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_sample() -> tuple[int, int]:
    """(total, idle) jiffies of all CPUs from /proc/stat; two samples give a busy fraction."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # idle + iowait


def busy_between(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Fraction of all CPUs busy between two cpu_sample() readings."""
    return 1.0 - (after[1] - before[1]) / max(1, after[0] - before[0])


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over the next ``seconds``: is someone else running?"""
    before = cpu_sample()
    time.sleep(seconds)
    return busy_between(before, cpu_sample())


def wait_until_quiet(max_load: float = 0.8, timeout: float = 600.0, poll: float = 10.0) -> float:
    """Wait (up to ``timeout``) until the 1-minute load average is below ``max_load``.

    The machine is shared: a measurement taken while someone else's tests run says little.
    Returns the load average when the wait ended; a timeout is not an error (the caller
    records the load next to its figures).
    """
    progress = Progress("waiting for a quiet machine")
    deadline = time.monotonic() + timeout
    while (load := load_average()) >= max_load and time.monotonic() < deadline:
        progress.update(f"load {load:.2f} >= {max_load}", force=True)
        time.sleep(poll)
    if load >= max_load:
        progress.done(f"gave up after {timeout:.0f} s: load {load:.2f}")
    return load
