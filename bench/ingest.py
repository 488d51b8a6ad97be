"""Ingest benchmark: the highest event rate each consumer sustains with zero loss.

    python bench/ingest.py                                # exporter + both baselines, 60 s trials
    python bench/ingest.py --duration 20 --consumers exporter --rates 100000,150000,200000
    python bench/ingest.py --consumers exporter@main,exporter --interleave   # before/after

A publisher process replays realistic Celery event envelopes (bench/envelopes.py: task-sent
on its own, worker task events batched in task.multi lists, heartbeats) into a private
redis-server at a target rate. Each consumer is tried at rising rates; a trial is lossless
when the consumer counted every published event, no PUBLISH found the subscriber gone, and
it caught up within --catch-up seconds after publishing stopped (so it kept up rather than
merely buffered). Consumers, all on the same stream:

* exporter  -- this project (Redis fast path);
* receiver  -- Celery's EventReceiver + State, the mechanism other exporters are built on
               (bench/baselines/receiver_state.py);
* flower    -- Flower 2.2's /metrics, installed from PyPI into bench/.venv-flower on first use;
* exporter@REV -- the exporter as it was at git revision REV (``git archive``), to compare a
               change with its base in one run; ``--interleave`` alternates them per rate.

Prints a table and writes bench/out/ingest.json.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    PYTHON,
    ROOT,
    Progress,
    free_port,
    http_json,
    http_text,
    private_redis,
    process,
    process_cpu_seconds,
    table,
    wait_for,
    write_json,
)
from bench.envelopes import Stream

FLOWER_VENV = ROOT / "bench" / ".venv-flower"
FLOWER_VERSION = "2.2.0"
CHANNEL = "/0.celeryev/*"


# ----------------------------------------------------------------------------- publisher


def resp_publish(channel: str, data: bytes) -> bytes:
    ch = channel.encode()
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(ch), ch, len(data), data)


def build_pool(size: int, seed: int) -> tuple[list[bytes], list[int], list[int]]:
    """RESP commands, events per message, and task events per message (Flower counts only
    task events in flower_events_total; heartbeats are worker events)."""
    commands, events, task_events = [], [], []
    for channel, data, n in itertools.islice(Stream(seed=seed).messages(), size):
        commands.append(resp_publish(channel, data))
        events.append(n)
        task_events.append(0 if "/worker." in channel else n)
    return commands, events, task_events


class ReplyCounter(threading.Thread):
    """Reads PUBLISH replies; ':0' means the event reached no subscriber (lost)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.replies = 0
        self.no_receiver = 0

    def run(self) -> None:
        tail = b""
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return
            data = tail + chunk
            cut = data.rfind(b"\r\n") + 2
            complete, tail = data[:cut], data[cut:]
            self.replies += complete.count(b"\r\n")
            self.no_receiver += complete.count(b":0\r\n")


def publish(port: int, rate: float, duration: float, pool: int, seed: int) -> dict[str, Any]:
    commands, events, task_events = build_pool(pool, seed)
    msg_rate = rate / (sum(events) / len(events))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    replies = ReplyCounter(sock)
    replies.start()
    sent = published_events = published_task_events = 0
    index = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < duration:
        due = min(int(elapsed * msg_rate), int(duration * msg_rate)) - sent
        if due > 0:
            end = index + due
            chunk = commands[index:end]
            counts = events[index:end]
            task_counts = task_events[index:end]
            while len(chunk) < due:  # wrap around the pool
                rest = due - len(chunk)
                chunk += commands[:rest]
                counts += events[:rest]
                task_counts += task_events[:rest]
            index = end % len(commands)
            sock.sendall(b"".join(chunk))
            sent += due
            published_events += sum(counts)
            published_task_events += sum(task_counts)
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    deadline = time.monotonic() + 60
    while replies.replies < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    return {
        "messages": sent,
        "events": published_events,
        "task_events": published_task_events,
        "seconds": elapsed,
        "replies": replies.replies,
        "no_receiver": replies.no_receiver,
    }


# ----------------------------------------------------------------------------- consumers


@dataclass
class Consumer:
    name: str
    start: Callable[[int, Path], contextlib.AbstractContextManager[Callable[[], int]]]


@contextlib.contextmanager
def run_exporter(
    port: int, workdir: Path, extra_args: Sequence[str] = (), source: Path | None = None
) -> Iterator[Callable[[], int]]:
    """The exporter on a free port; yields its event counter (with ``.pid`` and ``.url``).

    ``source``: a directory holding another ``exporter`` package to run instead of this
    checkout's (``-P`` keeps the current directory off sys.path, so PYTHONPATH wins).
    """
    web = free_port()
    argv = [
        PYTHON,
        *(["-P"] if source else []),
        "-m",
        "exporter",
        "--broker-url",
        f"redis://127.0.0.1:{port}/0",
        "--web.listen-address",
        f"127.0.0.1:{web}",
        "--inspect-interval",
        "0",
        "--log-level",
        "WARNING",
        *extra_args,
    ]
    env = {"PYTHONPATH": str(source)} if source else None
    with process(argv, workdir / "exporter.log", env=env) as proc:
        wait_for(lambda: http_json(f"http://127.0.0.1:{web}/readyz")["ready"], 30, "exporter")
        counter = lambda: http_json(f"http://127.0.0.1:{web}/api/status")["events_total"]  # noqa: E731
        counter.pid = proc.pid  # type: ignore[attr-defined]
        counter.proc = proc  # type: ignore[attr-defined]
        counter.url = f"http://127.0.0.1:{web}/metrics"  # type: ignore[attr-defined]
        yield counter


@contextlib.contextmanager
def run_exporter_at(
    rev: str, port: int, workdir: Path, extra_args: Sequence[str] = ()
) -> Iterator[Callable[[], int]]:
    """The exporter package as it was at git revision ``rev``."""
    source = workdir / f"exporter-at-{rev}"
    source.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "exporter"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    with run_exporter(port, workdir, extra_args, source=source) as counter:
        yield counter


@contextlib.contextmanager
def run_receiver(port: int, workdir: Path) -> Iterator[Callable[[], int]]:
    status = workdir / "receiver.json"
    argv = [
        PYTHON,
        str(ROOT / "bench" / "baselines" / "receiver_state.py"),
        f"redis://127.0.0.1:{port}/0",
        str(status),
    ]
    with process(argv, workdir / "receiver.log") as proc:
        wait_for(lambda: json.loads(status.read_text())["ready"], 30, "receiver baseline")

        def counter() -> int:
            state = json.loads(status.read_text())
            if state.get("error"):
                raise RuntimeError(state["error"])
            return state["events"]

        counter.pid = proc.pid  # type: ignore[attr-defined]
        yield counter


def ensure_flower() -> Path:
    celery = FLOWER_VENV / "bin" / "celery"
    if not celery.exists():
        print(f"installing flower=={FLOWER_VERSION} into {FLOWER_VENV} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True)
        subprocess.run(
            [
                str(FLOWER_VENV / "bin" / "pip"),
                "install",
                "-q",
                f"flower=={FLOWER_VERSION}",
                "celery[redis]==5.7.0",
            ],
            check=True,
        )
    return celery


FLOWER_EVENTS = re.compile(r"^flower_events_total\{[^}]*\} ([0-9.e+]+)$", re.M)


@contextlib.contextmanager
def run_flower(port: int, workdir: Path) -> Iterator[Callable[[], int]]:
    web = free_port()
    argv = [
        str(ensure_flower()),
        "--broker",
        f"redis://127.0.0.1:{port}/0",
        "flower",
        f"--port={web}",
        "--address=127.0.0.1",
        "--logging=warning",
    ]
    with process(argv, workdir / "flower.log") as proc:
        wait_for(lambda: http_text(f"http://127.0.0.1:{web}/metrics"), 60, "flower")
        client = redis.Redis(port=port)
        wait_for(lambda: client.execute_command("PUBSUB", "NUMPAT") >= 1, 30, "flower subscribed")

        def counter() -> int:
            text = http_text(f"http://127.0.0.1:{web}/metrics", timeout=60)
            return int(sum(float(v) for v in FLOWER_EVENTS.findall(text)))

        counter.pid = proc.pid  # type: ignore[attr-defined]
        counter.url = f"http://127.0.0.1:{web}/metrics"  # type: ignore[attr-defined]
        yield counter


CONSUMERS = {"exporter": run_exporter, "receiver": run_receiver, "flower": run_flower}


def consumer(name: str) -> Callable[[int, Path], contextlib.AbstractContextManager[Any]]:
    if name.startswith("exporter@"):
        return functools.partial(run_exporter_at, name.partition("@")[2])
    return CONSUMERS[name]


# ----------------------------------------------------------------------------- trials


@dataclass
class Trial:
    consumer: str
    target_rate: int
    published_events: int
    counted: int
    lost: int
    no_receiver: int
    achieved_rate: float
    catch_up_seconds: float | None
    cpu_seconds_per_100k: float | None
    lossless: bool
    note: str = ""


def publisher_argv(port: int, rate: int, duration: float, pool: int, out: Path) -> list[str]:
    """The command line of this script's publisher (``publish``), for other benches too."""
    return [
        PYTHON,
        str(Path(__file__).resolve()),
        "publish",
        "--port",
        str(port),
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--pool",
        str(pool),
        "--out",
        str(out),
    ]


def trial(name: str, rate: int, args: dict[str, Any]) -> Trial:
    with tempfile.TemporaryDirectory(prefix=f"ingest-{name}-") as tmp, private_redis() as port:
        workdir = Path(tmp)
        with consumer(name)(port, workdir) as count:
            cpu_before = process_cpu_seconds(count.pid)  # type: ignore[attr-defined]
            result_file = workdir / "publisher.json"
            argv = publisher_argv(port, rate, args["duration"], args["pool"], result_file)
            progress = Progress(f"{name} @ {rate:,}/s")
            publisher = subprocess.Popen(argv)
            started = time.monotonic()
            note = ""
            while publisher.poll() is None:
                with contextlib.suppress(Exception):
                    progress.update(f"{time.monotonic() - started:5.1f}s counted {count():,}")
                time.sleep(0.5)
            published = json.loads(result_file.read_text())
            # Flower's flower_events_total counts task events only.
            expected = published["task_events" if name == "flower" else "events"]
            ended = time.monotonic()
            counted, caught_up = 0, None
            while time.monotonic() - ended < args["drain"]:
                try:
                    counted = count()
                except Exception as exc:  # the consumer died or stopped answering
                    note = f"consumer failed: {exc}"[:120]
                    break
                if counted >= expected:
                    caught_up = time.monotonic() - ended
                    break
                time.sleep(0.2)
            cpu = process_cpu_seconds(count.pid) - cpu_before  # type: ignore[attr-defined]
    lost = max(0, expected - counted)
    lossless = (
        lost == 0
        and published["no_receiver"] == 0
        and caught_up is not None
        and caught_up <= args["catch_up"]
    )
    if published["no_receiver"]:
        note = note or "subscriber disconnected by Redis"
    progress.done(f"published {published['events']:,}, counted {counted:,}, lost {lost:,}")
    return Trial(
        consumer=name,
        target_rate=rate,
        published_events=expected,
        counted=counted,
        lost=lost,
        no_receiver=published["no_receiver"],
        achieved_rate=round(published["events"] / published["seconds"]),
        catch_up_seconds=None if caught_up is None else round(caught_up, 2),
        cpu_seconds_per_100k=round(cpu / counted * 100_000, 3) if counted else None,
        lossless=lossless,
        note=note,
    )


@click.group(invoke_without_command=True)
@click.option(
    "--rates",
    default="10000,15000,20000,50000,100000,150000,175000,200000",
    show_default=True,
    help="Target events/s to try, rising.",
)
@click.option(
    "--duration", type=float, default=60.0, show_default=True, help="Seconds each trial publishes."
)
@click.option("--consumers", default="exporter,receiver,flower", show_default=True)
@click.option(
    "--pool",
    type=int,
    default=200_000,
    show_default=True,
    help="Distinct envelopes pre-built, then replayed in a loop.",
)
@click.option(
    "--drain",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for a consumer to count everything after publishing.",
)
@click.option(
    "--interleave",
    is_flag=True,
    help="Alternate the consumers at each rate (rates outer) instead of one after another: "
    "for before/after comparisons on a machine whose speed drifts.",
)
@click.option(
    "--catch-up",
    type=float,
    default=2.0,
    show_default=True,
    help="A lossless trial must count everything within this many seconds.",
)
@click.pass_context
def main(
    ctx: click.Context,
    rates: str,
    duration: float,
    consumers: str,
    pool: int,
    drain: float,
    interleave: bool,
    catch_up: float,
) -> None:
    """Highest zero-loss event rate per consumer, side by side."""
    if ctx.invoked_subcommand:
        return
    args = {"duration": duration, "pool": pool, "drain": drain, "catch_up": catch_up,
            "interleave": interleave}  # fmt: skip
    trials: list[Trial] = []
    best: dict[str, int] = {}
    names = consumers.split(",")
    rate_list = [int(r) for r in rates.split(",")]
    if interleave:
        order = [(name, rate) for rate in rate_list for name in names]
    else:
        order = [(name, rate) for name in names for rate in rate_list]
    failed: set[str] = set()
    for name, rate in order:
        if name in failed:
            continue  # rates rise: past the first loss, higher rates lose too
        result = trial(name, rate, args)
        trials.append(result)
        if result.lossless:
            best[name] = rate
        else:
            failed.add(name)
    rows = [
        (
            t.consumer,
            f"{t.target_rate:,}",
            f"{t.achieved_rate:,}",
            f"{t.published_events:,}",
            f"{t.lost:,}",
            t.no_receiver,
            t.catch_up_seconds,
            t.cpu_seconds_per_100k,
            "yes" if t.lossless else "no",
            t.note,
        )
        for t in trials
    ]
    print(
        table(
            [
                "consumer",
                "target ev/s",
                "achieved ev/s",
                "published",
                "lost",
                "no-receiver",
                "catch-up s",
                "CPU s/100k",
                "lossless",
                "note",
            ],
            rows,
        )
    )
    summary = [(name, f"{best.get(name, 0):,}") for name in consumers.split(",")]
    if best.get("exporter") and best.get("receiver"):
        summary.append(("exporter / receiver", f"{best['exporter'] / best['receiver']:.1f}x"))
    print()
    print(table(["consumer", "highest lossless ev/s"], summary))
    path = write_json(
        "ingest.json", {"settings": args, "best": best, "trials": [asdict(t) for t in trials]}
    )
    print(f"\nwrote {path}")


@main.command("publish", hidden=True)
@click.option("--port", type=int, required=True)
@click.option("--rate", type=float, required=True)
@click.option("--duration", type=float, required=True)
@click.option("--pool", type=int, required=True)
@click.option("--seed", type=int, default=7)
@click.option("--out", type=click.Path(dir_okay=False), required=True)
def publish_command(
    port: int, rate: float, duration: float, pool: int, seed: int, out: str
) -> None:
    """Internal: publish at ``rate`` events/s for ``duration`` seconds, then write a result."""
    Path(out).write_text(json.dumps(publish(port, rate, duration, pool, seed)))


if __name__ == "__main__":
    main()
