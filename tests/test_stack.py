"""scripts/stack: the whole system runs, survives crashes, lets you cause faults, and heals.

The parts first (fast, real processes and sockets): the port check that a stop's TIME_WAIT
does not fool, the supervisor's backoff, crash-loop stop and fault holds. Then the real stack,
started as the README says: a job end to end, a restart on the same ports at once, and (with
--fast alert settings) a quiet demo, the kill-worker tour, a crash restarted and a crash loop.
Every stack runs with CELERY_OBSERVATORY_STACK=<id> in its environment, which all of its
children inherit: each test checks that no process carrying its id is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import control
from stack.faults import FAULTS
from stack.ports import Ports, busy_port, listening
from stack.supervisor import CrashLoop, Hold, Supervisor
from tests.support.exporter import http_get, parse
from tests.support.procs import PYTHON, ROOT, free_port, wait_until

PORTS = tuple(name for name, _ in Ports().items())
STACK = ROOT / "scripts" / "stack"


# --- helpers ----------------------------------------------------------------------------------


def processes_of(stack_id: str) -> list[int]:
    """Pids whose environment carries the stack's id (every child the stack started)."""
    marker = f"CELERY_OBSERVATORY_STACK={stack_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return found


def time_wait_ports() -> set[int]:
    """Local ports with a TCP connection in TIME_WAIT (IPv4)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "06":
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def prom_query(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    return json.loads(http_get(url)[1])["data"]["result"]


class RunningStack:
    """``scripts/stack`` as a subprocess on free ports, with its own id and state directory."""

    def __init__(self, tmp: Path, *args: str, ports: dict[str, int] | None = None) -> None:
        self.ports = ports or {name: free_port() for name in PORTS}
        self.stack_id = f"test-{uuid.uuid4().hex[:8]}"
        self.state = tmp / "state"
        self.log = tmp / f"stack-{self.stack_id}.log"
        self.argv = [str(STACK), "--state-dir", str(self.state), *args]
        for name, port in self.ports.items():
            self.argv += [f"--{name}-port", str(port)]
        self.env = {**os.environ, "CELERY_OBSERVATORY_STACK": self.stack_id}
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, port: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def start(self, env: dict[str, str] | None = None) -> RunningStack:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
            )
        wait_until(
            lambda: "Ctrl-C stops everything" in self.output() or self.proc.poll() is not None,  # type: ignore[union-attr]
            timeout=150,
            interval=0.5,
            message="the stack to start",
        )
        assert self.proc.poll() is None, f"the stack exited:\n{self.output()[-4000:]}"
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def status(self) -> dict[str, Any]:
        return control.request(self.state, {"command": "status"}, lambda _line: None)

    def component(self, name: str) -> dict[str, Any]:
        return next(c for c in self.status()["components"] if c["name"] == name)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``scripts/stack <args> --state-dir <this stack's>``, as a user types it."""
        return subprocess.run(
            [str(STACK), *args, "--state-dir", str(self.state)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def stop(self, timeout: float = 90, sig: signal.Signals = signal.SIGINT) -> int | None:
        """SIGINT (Ctrl-C) and wait; returns the exit code. Never leaves a process behind."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return code

    def leftovers(self) -> list[int]:
        """Kill (and return) every process still carrying this stack's id."""
        found = processes_of(self.stack_id)
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return found

    def fail(self, exc: BaseException) -> AssertionError:
        return AssertionError(f"{exc}\n--- stack output:\n{self.output()[-5000:]}")


# --- the parts --------------------------------------------------------------------------------


def time_wait_on_a_fresh_port() -> int:
    """A port whose only trace is a connection in TIME_WAIT, as a server leaves it at stop."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first, so its end of the connection waits
    client.recv(1)
    client.close()
    server.close()
    return port


def test_port_check_ignores_time_wait_and_names_a_listener() -> None:
    port = time_wait_on_a_fresh_port()
    assert port in time_wait_ports()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the old check did: refused for a minute
    others = {name: free_port() for name in PORTS if name != "redis"}
    assert not listening(port)
    assert busy_port(Ports(redis=port, **others)) is None

    for host in ("127.0.0.1", "0.0.0.0"):  # a listener on loopback or on every address
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen()
            assert listening(port)
            problem = busy_port(Ports(redis=port, **others))
            assert problem == f"port {port} (redis) is in use: choose another with --redis-port"
    others["api"] = others["exporter"]
    assert "--exporter-port and --api-port are both" in (
        busy_port(Ports(redis=port, **others)) or ""
    )


def supervisor(tmp_path: Path, events: list[str], **kwargs: Any) -> Supervisor:
    return Supervisor(os.environ, ROOT, tmp_path / "logs", events.append, **kwargs)


def tick_until(sup: Supervisor, predicate: Any, timeout: float = 20, message: str = "") -> None:
    """Tick the supervisor until ``predicate()``; its exceptions (CrashLoop) propagate."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {message}"
        sup.tick()
        time.sleep(0.02)


def test_supervisor_backs_off_then_stops_a_crash_loop_with_the_log_tail(tmp_path: Path) -> None:
    events: list[str] = []
    sup = supervisor(tmp_path, events, backoff_base=0.05, crash_limit=4, crash_window=60)
    crashing = "import sys; print('cannot bind 127.0.0.1:1: permission denied'); sys.exit(3)"
    sup.start("broken", [PYTHON, "-c", crashing])
    try:
        with pytest.raises(CrashLoop) as caught:
            tick_until(sup, lambda: False, message="a crash loop")
    finally:
        sup.stop_all(grace=5)
    message = str(caught.value)
    assert message.startswith("broken is crash-looping: 4 crashes within 60 s")
    assert "the last one exit code 3" in message
    assert "cannot bind 127.0.0.1:1: permission denied" in message  # the why, from its log
    delays = [float(m) for e in events for m in re.findall(r"restarting in ([\d.]+) s", e)]
    assert delays == [0.05, 0.1, 0.2]  # capped exponential: each crash waits twice as long
    assert sum("restarted" in e for e in events) == 3


def test_supervisor_restarts_a_killed_process_and_holds_a_faulted_one(tmp_path: Path) -> None:
    events: list[str] = []
    sup = supervisor(tmp_path, events, backoff_base=0.05, backoff_cap=0.1, crash_limit=3)
    sleeper = [PYTHON, "-c", "import time; time.sleep(120)"]
    child = sup.start("sleeper", sleeper)
    try:
        first = child.proc.pid  # type: ignore[union-attr]
        os.killpg(first, signal.SIGKILL)
        tick_until(sup, lambda: child.running and child.proc.pid != first, message="a restart")  # type: ignore[union-attr]
        assert "sleeper exited (killed by SIGKILL); restarting in 0.05 s" in events
        assert child.restarts == 1

        delivered = threading.Event()
        hold = Hold("test-fault", time.monotonic(), 0.2, 30, delivered.is_set)
        second = sup.hold("sleeper", hold, signal.SIGKILL)
        tick_until(sup, lambda: not child.running, message="the fault to take it down")
        # While something is held down on purpose, another component's crashes still
        # restart it but never count as a crash loop (it lost a dependency, not its mind):
        # four crashes here, with a crash limit of three.
        other = sup.start("other", [PYTHON, "-c", "import sys; sys.exit(1)"])
        tick_until(sup, lambda: len(other.crashes) >= 4, message="crashes during the hold")
        assert not any(counts for _, counts in other.crashes)
        assert time.monotonic() - hold.since > hold.min_seconds
        assert not child.running and child.hold is hold  # past its minimum, no alert yet
        delivered.set()
        tick_until(sup, lambda: child.running, message="release after the alert")
        assert child.proc.pid != second  # type: ignore[union-attr]
        assert any("sleeper restarted" in e and "test-fault fault is over" in e for e in events)
        with pytest.raises(ValueError, match="not running"):
            sup.hold("other", Hold("x", time.monotonic(), 1, 1), signal.SIGKILL)
    finally:
        sup.stop_all(grace=5)
    assert not child.running
    with pytest.raises(ProcessLookupError):
        os.killpg(child.pgid, 0)  # type: ignore[arg-type]


def run_stack_py(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "stack.py"), *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=60,
        check=False,
    )


def test_fault_and_status_without_a_stack_say_so(tmp_path: Path) -> None:
    for args in (("fault", "kill-worker"), ("status",)):
        result = run_stack_py(*args, "--state-dir", str(tmp_path))
        assert result.returncode == 1
        assert f"no stack is running with state directory {tmp_path}" in result.stderr
        assert "Traceback" not in result.stderr
    unknown = run_stack_py("fault", "meteor-strike", "--state-dir", str(tmp_path))
    assert unknown.returncode == 2 and "No such command 'meteor-strike'" in unknown.stderr


def test_a_bad_alert_setting_is_one_line(tmp_path: Path) -> None:
    result = run_stack_py("--state-dir", str(tmp_path), "--alert-setting", "failure_ratoi=0.1")
    assert result.returncode == 1
    assert "unknown setting 'failure_ratoi'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_readme_tour_lists_every_fault_the_command_has() -> None:
    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("### The tour") :]
    tour = tour[: tour.index("\n## ")]
    documented = re.findall(r"^\| `scripts/stack fault ([a-z-]+)`", tour, re.M)
    assert documented == list(FAULTS)
    listed = run_stack_py("fault", "--help").stdout
    assert all(name in listed for name in FAULTS)


def test_every_panel_a_fault_points_at_exists() -> None:
    from stack.faults import PANELS, find_panels

    for fault, keywords in PANELS.items():
        assert len(find_panels(keywords)) == len(keywords), (fault, keywords)


def test_missing_binary_is_named_with_how_to_install_it(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/nonexistent"}
    result = run_stack_py("--state-dir", str(tmp_path), env=env)
    assert result.returncode == 1
    assert "redis-server is not installed: sudo apt-get install redis-server" in result.stderr


# --- the stack, as the README runs it ---------------------------------------------------------


def docs_thumb_example() -> dict[str, Any]:
    """The JSON body of docs/workload.md's /thumb example."""
    text = (ROOT / "docs" / "workload.md").read_text()
    match = re.search(r"curl [^\n]*/thumb [^\n]*-d '([^']+)'", text)
    assert match, "docs/workload.md has no /thumb example"
    return json.loads(match.group(1))


@pytest.mark.e2e
@pytest.mark.slow
def test_stack_runs_end_to_end_then_starts_again_at_once_on_the_same_ports(
    tmp_path: Path,
) -> None:
    stack = RunningStack(tmp_path, "--rate", "1")
    try:
        stack.start()
        api, exporter = stack.url("api"), stack.url("exporter")
        status, job = post_json(f"{api}/report", {"user_id": 7, "data": {"size": 50}})
        assert status == 202

        # The docs' thumbnail example, against the stack's sample images (its port moved).
        example = docs_thumb_example()
        documented = urllib.parse.urlsplit(example["url"])
        assert documented.netloc == f"127.0.0.1:{Ports().images}"  # the stack's default
        url = documented._replace(netloc=f"127.0.0.1:{stack.ports['images']}").geturl()
        status, thumb = post_json(f"{api}/thumb", {"url": url})
        assert status == 202
        for name, ticket in (("report", job), ("thumbnail", thumb)):
            wait_until(
                lambda t=ticket: (
                    json.loads(http_get(f"{api}/status/{t['job_id']}")[1])["status"] == "succeeded"
                ),
                timeout=60,
                message=f"the {name} job to succeed",
            )
        wait_until(
            lambda: (
                parse(http_get(f"{exporter}/metrics")[1]).total(
                    "celery_task_succeeded_total", name="workload.tasks.generate_report"
                )
                >= 1
            ),
            timeout=30,
            message="the exporter to count the success",
        )
        prometheus = stack.url("prometheus")
        wait_until(
            lambda: any(
                r["value"][1] == "1" for r in prom_query(prometheus, 'up{job="celery-exporter"}')
            ),
            timeout=60,
            interval=1,
            message="Prometheus to scrape the exporter",
        )
        wait_until(
            lambda: "workers 5/5 up" in stack.output(), timeout=30, message="the status line"
        )
        # Every runbook link of the stack's rules opens (served by the stack itself).
        rules = json.loads(http_get(f"{prometheus}/api/v1/rules")[1])["data"]["groups"]
        links = {
            rule["annotations"]["runbook_url"]
            for group in rules
            for rule in group["rules"]
            if rule["type"] == "alerting"
        }
        assert len(links) >= 10
        for link in links:
            assert link.startswith(stack.url("webhook", "/runbooks/")), link
            code, body = http_get(link)
            assert code == 200 and body.startswith("# Celery"), link
        # celery beat runs, with its schedule in the state directory.
        assert stack.component("beat")["state"] == "running"
        assert list((stack.state / "beat").glob("celerybeat-schedule*"))
        assert len(processes_of(stack.stack_id)) >= 14
    except AssertionError as exc:
        stack.stop()
        stack.leftovers()
        raise stack.fail(exc) from None
    finally:
        code = stack.stop()
        leftovers = stack.leftovers()
    assert code == 0, stack.output()[-3000:]
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert "nothing left running" in stack.output()

    # At once, on the same ports: connections the first stack closed are still in TIME_WAIT
    # (the API's, the exporter's), which a plain bind in the port check used to trip on.
    assert time_wait_ports() & set(stack.ports.values()), "no TIME_WAIT: nothing to prove"
    again = RunningStack(tmp_path / "again", "--no-traffic", ports=stack.ports)
    (tmp_path / "again").mkdir()
    try:
        again.start()
        assert "is in use" not in again.output()
    except AssertionError as exc:
        raise again.fail(exc) from None
    finally:
        code = again.stop(sig=signal.SIGHUP)  # its terminal closed: it stops all the same
        leftovers = again.leftovers()
    assert code == 0, again.output()[-3000:]
    assert leftovers == []
    assert "stopped; nothing left running." in again.output()


# --- the fast stack: a quiet demo, the fault tour, crashes ------------------------------------


@pytest.fixture(scope="module")
def fast_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """One stack with second-scale alerts for the tests below, in order (the last one ends it).

    The demo's traffic runs at twice its default rate with a tenth of the reports' CPU work
    (WORKLOAD_REPORT_WORK_ROUNDS): more tasks per second of test, less CPU on a shared
    machine.
    """
    tmp = tmp_path_factory.mktemp("fast-stack")
    stack = RunningStack(tmp, "--fast", "--rate", "4")
    try:
        stack.start(env={"WORKLOAD_REPORT_WORK_ROUNDS": "20"})
        yield stack
    finally:
        stack.stop()
        leftovers = stack.leftovers()
        assert leftovers == [], f"processes left behind: {leftovers}"


def finished(metrics: Any, task: str) -> float:
    return metrics.total("celery_task_succeeded_total", name=task) + metrics.total(
        "celery_task_failed_total", name=task
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_the_demo_traffic_fires_no_alert_with_fast_alert_settings(
    fast_stack: RunningStack,
) -> None:
    stack, prometheus = fast_stack, fast_stack.url("prometheus")
    try:
        rules = json.loads(http_get(f"{prometheus}/api/v1/rules")[1])["data"]["groups"]
        alerting = {r["name"]: r for g in rules for r in g["rules"] if r["type"] == "alerting"}
        failure_ratio = alerting["CeleryTaskFailureRatioHigh"]
        assert failure_ratio["duration"] == 2  # the fast settings' for: ...
        assert ">= 20" in failure_ratio["query"]  # ... with the real minimum of finished tasks
        assert len(alerting) >= 13
        for task in ("process_image", "generate_report", "send_welcome_email"):
            wait_until(
                lambda t=task: (
                    finished(
                        parse(http_get(stack.url("exporter", "/metrics"))[1]), f"workload.tasks.{t}"
                    )
                    >= 60
                ),
                timeout=240,
                interval=2,
                message=f"60 {task} tasks to finish",
            )
        # The failure ratio is evaluated (so the alert could fire) ...
        ratios = prom_query(prometheus, "name_queue_name:celery_task_failure:ratio_rate5m")
        assert {r["metric"]["name"] for r in ratios} >= {"workload.tasks.process_image"}
        # ... and no alert fired at any moment of the run, nor reached Alertmanager.
        fired = prom_query(prometheus, 'max_over_time(ALERTS{alertstate="firing"}[30m])')
        assert fired == [], [r["metric"] for r in fired]
        assert stack.status()["alerts"]["notifications"] == []
    except AssertionError as exc:
        raise stack.fail(exc) from None


@pytest.mark.e2e
@pytest.mark.slow
def test_fault_tour_kill_worker_shows_it_down_alerts_and_heals(fast_stack: RunningStack) -> None:
    stack = fast_stack
    hostname = f"email@{socket.gethostname()}"

    def worker_up() -> float | None:
        metrics = parse(http_get(stack.url("exporter", "/metrics"))[1])
        return metrics.value("celery_worker_up", hostname=hostname)

    try:
        wait_until(lambda: worker_up() == 1, timeout=30, message=f"{hostname} up")
        before = stack.component("worker-email")["pid"]
        result = stack.cli("fault", "kill-worker", "--worker", "email")
        assert result.returncode == 0, result.stderr
        said = result.stdout
        assert f"SIGKILLed worker-email ({hostname}, pid {before}" in said
        assert stack.url("exporter", "/") in said  # the status page
        assert f'celery_worker_state{{hostname="{hostname}",state="lost"}}' in said
        assert "CeleryWorkerDown (fires after for: 2 s)" in said
        runbook = stack.url("webhook", "/runbooks/CeleryWorkerDown.md")
        assert runbook in said and http_get(runbook)[0] == 200
        assert "Celery overview > Worker states" in said
        assert stack.component("worker-email")["state"] == "held"

        # The exporter shows it down ...
        wait_until(lambda: worker_up() == 0, timeout=30, message=f"{hostname} down")
        metrics = parse(http_get(stack.url("exporter", "/metrics"))[1])
        assert metrics.value("celery_worker_state", hostname=hostname, state="lost") == 1
        # ... CeleryWorkerDown reaches Alertmanager's receiver ...
        wait_until(
            lambda: any(
                n["alertname"] == "CeleryWorkerDown"
                and n["status"] == "firing"
                and n["labels"].get("hostname") == hostname
                for n in stack.status()["alerts"]["notifications"]
            ),
            timeout=90,
            interval=1,
            message="CeleryWorkerDown to reach the webhook receiver",
        )
        # ... then the worker comes back, and the alert resolves.
        wait_until(lambda: worker_up() == 1, timeout=90, interval=1, message="the worker back")
        email = stack.component("worker-email")
        assert email["state"] == "running" and email["pid"] != before
        assert "worker-email restarted" in stack.output()
        assert "the kill-worker fault is over" in stack.output()
        wait_until(
            lambda: "CeleryWorkerDown" not in stack.status()["alerts"]["firing"],
            timeout=60,
            interval=1,
            message="CeleryWorkerDown to resolve",
        )
        assert stack.proc.poll() is None  # type: ignore[union-attr]
    except AssertionError as exc:
        raise stack.fail(exc) from None


@pytest.mark.e2e
@pytest.mark.slow
def test_every_other_fault_says_what_to_watch_and_heals(fast_stack: RunningStack) -> None:
    """stop-redis, flood, stop-beat and slow-task, briefly: each acts, and the stack heals."""
    stack = fast_stack
    metrics = lambda: parse(http_get(stack.url("exporter", "/metrics"))[1])  # noqa: E731

    def run(*args: str) -> str:
        result = stack.cli("fault", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Watch:" in result.stdout and stack.url("exporter", "/") in result.stdout
        return result.stdout

    try:
        said = run("stop-redis", "--seconds", "4")
        assert "stop-redis: stopped redis" in said and "CeleryBrokerUnreachable" in said
        wait_until(lambda: metrics().value("celery_exporter_broker_up") == 0, timeout=30,
                   message="the exporter to see the broker down")  # fmt: skip
        wait_until(lambda: "redis restarted" in stack.output(), timeout=30, message="Redis back")
        wait_until(lambda: metrics().value("celery_exporter_broker_up") == 1, timeout=60,
                   message="the exporter to reconnect")  # fmt: skip
        wait_until(lambda: http_get(stack.url("api", "/readyz"))[0] == 200, timeout=60,
                   message="the API to reach Redis again")  # fmt: skip
        wait_until(lambda: "workers 5/5 up" in stack.output().rsplit("redis restarted", 1)[1],
                   timeout=60, message="every worker back")  # fmt: skip

        said = run("flood", "--count", "30")
        assert re.search(r"flood: sent 30 jobs to POST /email \(queue email\)", said)
        accepted = int(re.search(r"(\d+) accepted \(202\)", said).group(1))  # type: ignore[union-attr]
        assert accepted == 30  # under the admission limit
        assert 'celery_queue_length{queue_name="email"}' in said

        before = metrics().total("celery_task_succeeded_total", name="workload.tasks.dummy_task")
        said = run("slow-task", "--sleep", "3")
        assert "slow-task: sent workload.tasks.dummy_task(0, sleep=3)" in said
        wait_until(
            lambda: (
                metrics().total("celery_task_succeeded_total", name="workload.tasks.dummy_task")
                > before
            ),
            timeout=60,
            message="the slow task to finish",
        )

        said = run("stop-beat", "--seconds", "2")
        assert "stop-beat: stopped celery beat" in said
        wait_until(lambda: "beat restarted" in stack.output(), timeout=30, message="beat back")
        assert stack.component("beat")["state"] == "running"
        assert stack.proc.poll() is None  # type: ignore[union-attr]
    except AssertionError as exc:
        raise stack.fail(exc) from None


@pytest.mark.e2e
@pytest.mark.slow
def test_a_crashed_component_is_restarted_and_the_status_line_says_so(
    fast_stack: RunningStack,
) -> None:
    stack = fast_stack
    try:
        before = stack.component("api")["pid"]
        os.killpg(before, signal.SIGKILL)  # gunicorn and its workers, as a crash would
        wait_until(
            lambda: stack.component("api")["pid"] not in (None, before),
            timeout=30,
            message="the API restarted",
        )
        assert "api exited (killed by SIGKILL); restarting in 1 s" in stack.output()
        wait_until(
            lambda: http_get(stack.url("api", "/healthz"))[0] == 200,
            timeout=30,
            message="the restarted API to answer",
        )
        wait_until(
            lambda: re.search(r"restarts: [^|]*api x1", stack.output()),
            timeout=10,
            message="the status line to show the restart",
        )
        assert stack.proc.poll() is None  # type: ignore[union-attr]
    except AssertionError as exc:
        raise stack.fail(exc) from None


@pytest.mark.e2e
@pytest.mark.slow
def test_a_crash_looping_component_stops_the_stack_with_the_reason(
    fast_stack: RunningStack,
) -> None:
    """Redis crashes and its port is taken meanwhile: every restart fails, so the stack stops."""
    stack = fast_stack
    pid = stack.component("redis")["pid"]
    squatter = socket.socket()
    try:
        os.killpg(pid, signal.SIGKILL)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        wait_until(
            lambda: squatter.bind(("127.0.0.1", stack.ports["redis"])) is None,
            timeout=5,
            interval=0.01,
            message="Redis' port free to take",
        )
        squatter.listen()
        code = stack.proc.wait(timeout=150)  # type: ignore[union-attr]
        output = stack.output()
        assert code == 1, output[-3000:]
        assert "redis is crash-looping: 5 crashes within 120 s" in output
        assert "Address already in use" in output  # the why, from redis' own log
        assert "stopped; nothing left running." in output
        assert stack.leftovers() == []
    except AssertionError as exc:
        raise stack.fail(exc) from None
    finally:
        squatter.close()
