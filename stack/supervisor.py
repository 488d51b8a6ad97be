"""Run every component in its own process group and keep it running.

A component that exits is restarted after a capped exponential backoff (1, 2, 4 ... 30 s), so
a crash shows up on the status page and in the alerts instead of ending the demo. One that
crashes ``crash_limit`` times within ``crash_window`` seconds is crash-looping: restarting it
again would only hide the cause, so :class:`CrashLoop` stops the stack with the tail of its log.

A fault (:mod:`stack.faults`) stops a component on purpose and *holds* it down: its exit is
not a crash, and it comes back when its :class:`Hold` is over. While any component is held,
the crashes of the others are restarted as usual but do not count towards a crash loop: a
worker that gives up while Redis is stopped on purpose is not broken.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
CRASH_LIMIT = 5
CRASH_WINDOW = 120.0
# Seconds a component gets to finish after SIGTERM (a worker's warm shutdown) before SIGKILL.
TERM_GRACE = 15.0
# Stopped last, so that workers can still acknowledge their tasks while they shut down.
STOP_LAST = ("redis",)


def describe_exit(code: int) -> str:
    """``-9`` -> ``killed by SIGKILL``; ``1`` -> ``exit code 1``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(the log is empty)"


@dataclass
class Hold:
    """Keeps a component down for a fault: at least ``min_seconds``, at most ``max_seconds``,
    and in between until ``alert_delivered()`` says the fault's alert reached the receiver."""

    fault: str
    since: float
    min_seconds: float
    max_seconds: float
    alert_delivered: Callable[[], bool] | None = None

    def over(self, now: float) -> bool:
        elapsed = now - self.since
        if elapsed >= self.max_seconds:
            return True
        if elapsed < self.min_seconds:
            return False
        return self.alert_delivered is None or self.alert_delivered()


@dataclass
class Child:
    """One component: its command, its log, and what the supervisor knows about it."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    pgid: int | None = None
    restarts: int = 0
    restart_at: float | None = None
    # (when, counts towards a crash loop) of recent crashes, oldest first.
    crashes: deque[tuple[float, bool]] = field(default_factory=deque)
    hold: Hold | None = None
    signalled_at: float | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class CrashLoop(Exception):
    """A component crashed too often too fast; the message says which, how and its log tail."""

    def __init__(self, child: Child, code: int, crashes: int, window: float) -> None:
        self.child = child
        super().__init__(
            f"{child.name} is crash-looping: {crashes} crashes within {window:g} s, the last one"
            f" {describe_exit(code)}. The end of {child.log}:\n{log_tail(child.log)}"
        )


class Supervisor:
    """Starts, restarts, holds and stops the stack's processes; :meth:`tick` does the work."""

    def __init__(
        self,
        env: Mapping[str, str],
        cwd: Path,
        log_dir: Path,
        on_event: Callable[[str], None],
        *,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        crash_limit: int = CRASH_LIMIT,
        crash_window: float = CRASH_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.log_dir = log_dir
        self.on_event = on_event
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.crash_limit = crash_limit
        self.crash_window = crash_window
        self.clock = clock
        self.children: dict[str, Child] = {}
        # tick() runs in the main loop; faults arrive on control-socket threads.
        self.lock = threading.RLock()

    # --- starting and supervising ---------------------------------------------------------------

    def start(self, name: str, argv: Sequence[str]) -> Child:
        with self.lock:
            child = Child(name, list(argv), self.log_dir / f"{name}.log")
            self.children[name] = child
            self._spawn(child)
            return child

    def _spawn(self, child: Child) -> None:
        child.log.parent.mkdir(parents=True, exist_ok=True)
        with open(child.log, "ab") as out:
            child.proc = subprocess.Popen(
                child.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: signalled whole, pool included
            )
        child.pgid = child.proc.pid
        child.restart_at = None
        child.signalled_at = None

    def tick(self) -> None:
        """Reap exited components, restart them when due, release held ones. Raises CrashLoop."""
        now = self.clock()
        with self.lock:
            for child in self.children.values():
                self._tick_child(child, now)

    def _tick_child(self, child: Child, now: float) -> None:
        if child.proc is not None and child.proc.poll() is not None:
            self._exited(child, now)
        if child.proc is not None:
            if child.hold and child.signalled_at and now - child.signalled_at > TERM_GRACE:
                self._signal_group(child, signal.SIGKILL)  # a fault's SIGTERM was not enough
            return
        if child.hold is not None:
            if child.hold.over(now):
                fault, child.hold = child.hold.fault, None
                self._respawn(child, f"the {fault} fault is over")
            return
        if child.restart_at is not None and now >= child.restart_at:
            self._respawn(child, f"restart {child.restarts + 1}")

    def _respawn(self, child: Child, why: str) -> None:
        self._spawn(child)
        child.restarts += 1
        assert child.proc is not None
        self.on_event(f"{child.name} restarted (pid {child.proc.pid}; {why})")

    def _exited(self, child: Child, now: float) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        self._signal_group(child, signal.SIGKILL)  # pool processes that outlived their parent
        child.proc = None
        if child.hold is not None:
            self.on_event(f"{child.name} is down ({describe_exit(code)}): {child.hold.fault}")
            return
        excused = any(other.hold for other in self.children.values())
        child.crashes.append((now, not excused))
        while child.crashes and now - child.crashes[0][0] > self.crash_window:
            child.crashes.popleft()
        counted = sum(1 for _, counts in child.crashes if counts)
        if counted >= self.crash_limit:
            raise CrashLoop(child, code, counted, self.crash_window)
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (len(child.crashes) - 1))
        child.restart_at = now + delay
        self.on_event(f"{child.name} exited ({describe_exit(code)}); restarting in {delay:g} s")

    # --- faults ---------------------------------------------------------------------------------

    def hold(self, name: str, hold: Hold, sig: signal.Signals) -> int:
        """Send ``sig`` to the component's whole process group and keep it down until
        ``hold`` is over. Returns the pid signalled; ValueError if it is not running."""
        with self.lock:
            child = self.children.get(name)
            if child is None:
                raise ValueError(f"{name} has not been started (is the stack still starting?)")
            if child.hold is not None:
                raise ValueError(f"{name} is already down for the {child.hold.fault} fault")
            if not child.running or child.proc is None:
                raise ValueError(f"{name} is not running right now (restarting after a crash)")
            child.hold = hold
            child.signalled_at = self.clock()
            self._signal_group(child, sig)
            return child.proc.pid

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to a component's process group (e.g. SIGHUP: reload its config)."""
        with self.lock:
            self._signal_group(self.children[name], sig)

    def held(self) -> list[Child]:
        with self.lock:
            return [child for child in self.children.values() if child.hold is not None]

    # --- stopping -------------------------------------------------------------------------------

    def stop_all(self, grace: float = TERM_GRACE) -> None:
        """SIGTERM every group (Redis last), SIGKILL whatever is left after ``grace`` seconds."""
        with self.lock:
            children = list(reversed(self.children.values()))
        first = [c for c in children if c.name not in STOP_LAST]
        last = [c for c in children if c.name in STOP_LAST]
        for wave in (first, last):
            for child in wave:
                self._signal_group(child, signal.SIGCONT)  # a stopped process cannot exit
                self._signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for child in wave:
                if child.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for child in children:
            self._signal_group(child, signal.SIGKILL)
            if child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=5)

    def _signal_group(self, child: Child, sig: signal.Signals) -> None:
        if child.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pgid, sig)

    # --- reporting ------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Each component's pid, state (running, restarting, held, exited) and restarts."""
        now = self.clock()
        with self.lock:
            rows = []
            for child in self.children.values():
                row: dict[str, Any] = {
                    "name": child.name,
                    "pid": child.proc.pid if child.running and child.proc else None,
                    "restarts": child.restarts,
                    "log": str(child.log),
                }
                if child.hold is not None:
                    row["state"] = "held"
                    row["held_by"] = child.hold.fault
                    row["held_for"] = round(now - child.hold.since, 1)
                elif child.running:
                    row["state"] = "running"
                elif child.restart_at is not None:
                    row["state"] = "restarting"
                    row["restart_in"] = round(max(0.0, child.restart_at - now), 1)
                else:
                    row["state"] = "exited"
                rows.append(row)
            return rows
