"""A drop-in for danihodovic/celery-exporter ("the peer"): its whole flag set, as a deployment
passes it (argv) or sets it (CE_* env vars), starts our exporter with the same meaning.

The peer's flags, read in its repository (danihodovic/celery-exporter; stored versions):

- ``src/cli.py`` (012e11e5, b6ff67c8): --broker-url; --broker-transport-option and
  --broker-ssl-option, repeatable ``key=value`` (transport values: digits -> int, JSON -> its
  value, else the string); --accept-content, comma-separated (its help: ``json,pickle``);
  --retry-interval; --host; --port; --buckets, comma-separated (its default ends with
  ``inf``); --log-level; --worker-timeout; --purge-offline-worker-metrics;
  --generic-hostname-task-sent-metric, a flag (task-sent gets ``hostname="generic"``);
  -Q/--queues, comma-separated, always reported; --metric-prefix, replacing ``celery_``;
  --static-label, repeatable ``name=value``, on every metric; --redbeat-redis-url,
  --redbeat-redis-use-ssl, --redbeat-key-prefix, --redbeat-sentinel, --redbeat-redis-option.
- ``src/exporter.py`` (012e11e5): counters labelled (name, hostname, queue_name); each
  worker-side event makes its label set appear at 0 in every counter, task_sent included,
  while task-sent increments task_sent alone (a producer's label set lives there only);
  queue_name is the task-sent's queue, else ``celery``; prometheus_client serves
  _created for every counter and histogram series; the --redbeat-* values only go into the
  Celery app's configuration (no metric).
- ``README.md`` (012e11e5): every argument also reads an environment variable with a ``CE_``
  prefix (click's auto_envvar_prefix: CE_ + the parameter name, so -Q/--queues is CE_QUEUES;
  a repeatable option's variable holds its values separated by whitespace).
- ``charts/celery-exporter/values.yaml`` (59a50992), ``templates/deployment.yaml`` (c849ff20):
  the chart configures the exporter through ``env`` only (CE_BROKER_URL...); it has no args.

Three flags come from the peer's pull requests, with the meaning they give them:
--default-queue-name (#355, merged: the queue_name of a task whose queue is not known),
--queue-wait-buckets (#386: the bounds of celery_task_queue_wait_time) and
--generic-hostname-worker-task-metric (#388: ``hostname="generic"`` on the worker-side task
counters and histograms; celery_worker_* keep the worker's name).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.exporter import ExporterProcess, Scrape
from tests.support.peer_app import VISIBILITY_TIMEOUT, make_app
from tests.support.procs import PYTHON, CeleryWorker, RedisServer, free_port
from tests.support.tls import TestCA

PREFIX = "myapp_"
STATIC = {"env": "test", "team": "core"}
KEYPREFIX = "peerpfx:"
DEFAULT_QUEUE = "fallback"
GENERIC = "generic"
WORKER = "w1@peerhost"  # consumes "work", whose tasks come with task-sent events
QUIET_WORKER = "w2@peerhost"  # consumes "quiet", whose producer sends no task-sent
NAP, FAIL = "peer.nap", "peer.fail"
RUNTIME_LE = ("0.05", "0.5", "2.0", "+Inf")  # --buckets 0.05,0.5,2,inf
QUEUE_WAIT_LE = ("3.0", "600.0", "+Inf")  # --queue-wait-buckets 3,600
# Ours, not the peer's, and only to make the test fast and exact: poll the queues every
# 0.5 s, and no inspect, so a task without task-sent gets --default-queue-name rather than
# the queue its worker is seen to consume (our inference, which the peer does not have).
OUR_TEST_KNOBS = {
    "CELERY_EXPORTER_BROKER_POLL_INTERVAL": "0.5",
    "CELERY_EXPORTER_INSPECT_INTERVAL": "0",
}
# The peer's task counters (celery_task_<event>_total), which it serves per label set.
PEER_COUNTERS = ("sent", "received", "started", "succeeded", "failed", "rejected", "revoked",
                 "retried")  # fmt: skip


@dataclass
class PeerBroker:
    """A TLS Redis, its CA, and what a producer or worker connects with."""

    redis: RedisServer
    ca: Path

    @property
    def exporter_url(self) -> str:
        """Without the ``ssl_*`` query: the TLS settings come from --broker-ssl-option."""
        return f"rediss://127.0.0.1:{self.redis.port}/0"

    @property
    def client_url(self) -> str:
        return self.redis.url(0)


def start_broker(procs, tmp_path: Path) -> PeerBroker:  # type: ignore[no-untyped-def]
    ca = TestCA(tmp_path / "pki")
    cert = ca.issue("redis")
    redis = RedisServer(procs, tmp_path / "redis", tls=(cert.cert, cert.key, ca.cert_path))
    return PeerBroker(redis.start(), ca.cert_path)


def peer_settings(broker: PeerBroker, port: int) -> dict[str, list[str]]:
    """Every flag of the peer, in its syntax: flag -> its values (one per repetition; an
    empty list is a boolean flag that is set)."""
    return {
        "--broker-url": [broker.exporter_url],
        "--broker-transport-option": [
            f"global_keyprefix={KEYPREFIX}",
            f"visibility_timeout={VISIBILITY_TIMEOUT}",
        ],
        "--broker-ssl-option": ["ssl_cert_reqs=required", f"ssl_ca_certs={broker.ca}"],
        "--accept-content": ["json"],
        "--retry-interval": ["5"],
        "--host": ["127.0.0.1"],
        "--port": [str(port)],
        "--buckets": ["0.05,0.5,2,inf"],
        "--queue-wait-buckets": ["3,600"],
        "--log-level": ["INFO"],
        "--worker-timeout": ["60"],
        "--purge-offline-worker-metrics": ["600"],
        "--generic-hostname-task-sent-metric": [],
        "--generic-hostname-worker-task-metric": [],
        "-Q": ["work,idle,spare"],
        "--metric-prefix": [PREFIX],
        "--default-queue-name": [DEFAULT_QUEUE],
        "--static-label": [f"{k}={v}" for k, v in STATIC.items()],
        "--redbeat-redis-url": ["redis://127.0.0.1:1/0"],
        "--redbeat-redis-use-ssl": ["false"],
        "--redbeat-key-prefix": ["redbeat"],
        "--redbeat-sentinel": ["sentinel-1:26379", "sentinel-2:26379"],
        "--redbeat-redis-option": ["service_name=master"],
    }


def as_argv(settings: dict[str, list[str]]) -> list[str]:
    """As a Helm ``args:`` list writes them: ``--flag=value``, ``-Q value``, ``--flag``."""
    argv: list[str] = []
    for flag, values in settings.items():
        if not values:
            argv.append(flag)
        for value in values:
            argv += [flag, value] if not flag.startswith("--") else [f"{flag}={value}"]
    return argv


def as_env(settings: dict[str, list[str]]) -> dict[str, str]:
    """As a Helm ``env:`` list sets them: CE_<PARAMETER NAME>, repetitions space-separated."""
    env = {}
    for flag, values in settings.items():
        name = "queues" if flag == "-Q" else flag.removeprefix("--")
        env["CE_" + name.replace("-", "_").upper()] = " ".join(values) if values else "true"
    return env


def run_peer_workload(procs, broker: PeerBroker, exporter: ExporterProcess) -> Scrape:  # type: ignore[no-untyped-def]
    """Real workers and producers of a keyprefixed TLS broker; the scrape once all is seen."""
    env = {
        "PEER_BROKER_URL": broker.client_url,
        "PEER_KEYPREFIX": KEYPREFIX,
        "PYTHONUNBUFFERED": "1",
    }
    app = "tests.support.peer_app"
    workers = [
        CeleryWorker(procs, env, queues=["work"], nodename=WORKER, app=app),
        CeleryWorker(procs, env, queues=["quiet"], nodename=QUIET_WORKER, app=app, concurrency=1),
    ]
    for worker in workers:
        worker.start(wait=False)
    for worker in workers:
        worker.wait_ready()

    producer = make_app(broker.client_url, KEYPREFIX)
    for _ in range(3):
        producer.send_task(NAP, (0.1,), queue="work")
    producer.send_task(FAIL, queue="work")
    producer.send_task(NAP, (0,), queue="idle")  # nobody consumes "idle"
    make_app(broker.client_url, KEYPREFIX, send_sent_event=False).send_task(
        NAP, (0,), queue="quiet"
    )

    def c(s: Scrape, event: str, *labels: str, exception: str | None = None) -> float | None:
        return counter(s, event, *labels, exception=exception)

    return exporter.wait_for(
        lambda s: (
            c(s, "succeeded", NAP, GENERIC, "work") == 3
            and c(s, "failed", FAIL, GENERIC, "work", exception="ValueError") == 1
            and c(s, "succeeded", NAP, GENERIC, DEFAULT_QUEUE) == 1
            and c(s, "sent", NAP, GENERIC, "idle") == 1
            and s.value(f"{PREFIX}queue_length", queue_name="idle", **STATIC) == 1
            and s.value(f"{PREFIX}queue_length", queue_name="work", **STATIC) == 0
        ),
        message="the peer workload's events and queues, under the peer's flags",
    )


def counter(
    scrape: Scrape, event: str, name: str, host: str, queue: str, exception: str | None = None
) -> float | None:
    labels = {"name": name, "hostname": host, "queue_name": queue, **STATIC}
    if exception is not None:
        labels["exception"] = exception
    return scrape.value(f"{PREFIX}task_{event}_total", **labels)


def label_sets(scrape: Scrape, sample: str) -> set[tuple[str, str, str]]:
    """(name, hostname, queue_name) of every series of ``sample``."""
    return {
        (d["name"], d["hostname"], d["queue_name"])
        for d in (dict(labels) for labels in scrape.series(sample))
    }


def assert_peer_semantics(scrape: Scrape) -> None:
    """What the peer's flags mean, read from one scrape (shared by the argv and env runs)."""
    # --metric-prefix replaces celery_ in every name of ours, and --static-label is on every
    # one of its series. prometheus_client's process_/python_ metrics are not ours (the peer
    # serves none).
    for sample, series in scrape.samples.items():
        assert not sample.startswith("celery_"), sample
        if sample.startswith(("process_", "python_")):
            continue
        assert sample.startswith(PREFIX), sample
        for labels in series:
            assert STATIC.items() <= dict(labels).items(), (sample, labels)

    work, failing = (NAP, GENERIC, "work"), (FAIL, GENERIC, "work")
    fallback, idle = (NAP, GENERIC, DEFAULT_QUEUE), (NAP, GENERIC, "idle")

    # --generic-hostname-task-sent-metric and --generic-hostname-worker-task-metric: every task
    # series says "generic"; the worker gauges keep the workers' names.
    for event in PEER_COUNTERS:
        assert {h for _, h, _ in label_sets(scrape, f"{PREFIX}task_{event}_total")} == {GENERIC}
    for histogram in ("task_runtime", "task_queue_wait_time"):
        assert {h for _, h, _ in label_sets(scrape, f"{PREFIX}{histogram}_count")} == {GENERIC}
    assert scrape.value(f"{PREFIX}worker_up", hostname=WORKER, **STATIC) == 1
    assert scrape.value(f"{PREFIX}worker_up", hostname=QUIET_WORKER, **STATIC) == 1

    # Label sets the workers saw appear at 0 in every counter, task_sent included (the peer
    # increments the others by 0 on each worker-side event).
    for key in (work, fallback, failing):
        for event in ("rejected", "revoked", "retried"):
            assert counter(scrape, event, *key) == 0, (event, key)
        assert counter(scrape, "failed", *key, exception="") == 0, key
    assert counter(scrape, "sent", *work) == 3
    assert counter(scrape, "succeeded", *failing) == 0
    # --default-queue-name: the queue_name of a task whose task-sent never came.
    for event in ("received", "started", "succeeded"):
        assert counter(scrape, event, *fallback) == 1, event
    assert counter(scrape, "sent", *fallback) == 0
    # A label set seen only on task-sent lives in task_sent alone, as in the peer.
    assert counter(scrape, "sent", *idle) == 1
    for event in PEER_COUNTERS[1:]:
        assert idle not in label_sets(scrape, f"{PREFIX}task_{event}_total"), event

    # _created beside every counter series and every histogram series (OpenMetrics).
    for event in PEER_COUNTERS:
        family = f"{PREFIX}task_{event}"
        assert set(scrape.series(f"{family}_total")) == set(scrape.series(f"{family}_created"))
    for histogram in ("task_runtime", "task_queue_wait_time"):
        family = f"{PREFIX}{histogram}"
        assert set(scrape.series(f"{family}_count")) <= set(scrape.series(f"{family}_created"))

    # --buckets and --queue-wait-buckets are the histograms' bounds (+Inf always).
    for histogram, bounds in (
        ("task_runtime", RUNTIME_LE),
        ("task_queue_wait_time", QUEUE_WAIT_LE),
    ):
        by_set: dict[tuple[str, ...], list[str]] = {}
        for labels in scrape.series(f"{PREFIX}{histogram}_bucket"):
            d = dict(labels)
            by_set.setdefault((d["name"], d["queue_name"]), []).append(d["le"])
        assert by_set, histogram
        for les in by_set.values():
            assert sorted(les, key=float) == list(bounds), (histogram, les)
    runtime = {
        dict(k)["le"]: v
        for k, v in scrape.series(f"{PREFIX}task_runtime_bucket").items()
        if (dict(k)["name"], dict(k)["queue_name"]) == (NAP, "work")
    }
    assert runtime["0.05"] == 0 and runtime["2.0"] == 3  # 0.1 s naps, in the bounds given
    wait = {"name": NAP, "hostname": GENERIC, "queue_name": "work", **STATIC}
    assert scrape.value(f"{PREFIX}task_queue_wait_time_count", **wait) == 3

    # -Q: every queue listed is reported, at 0 when empty; the transport options hold
    # (global_keyprefix: the queues and events were found under it at all; visibility_timeout).
    for queue, length in (("work", 0), ("idle", 1), ("spare", 0)):
        assert scrape.value(f"{PREFIX}queue_length", queue_name=queue, **STATIC) == length
    visibility = scrape.value(f"{PREFIX}broker_visibility_timeout_seconds", **STATIC)
    assert visibility == VISIBILITY_TIMEOUT


def test_the_peers_flags_as_argv(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    broker = start_broker(procs, tmp_path)
    port = free_port()
    args = as_argv(peer_settings(broker, port))
    exporter = ExporterProcess(procs, broker.exporter_url, args=args, env=OUR_TEST_KNOBS,
                               port=port, own_flags=False).start()  # fmt: skip
    assert exporter.argv()[3:] == args  # nothing of ours on the command line
    assert_peer_semantics(run_peer_workload(procs, broker, exporter))
    log = exporter.log_text()
    assert "Traceback" not in log
    assert "accepted and ignored" in log and "--redbeat-sentinel" in log


def test_the_peers_flags_as_ce_env_vars(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    broker = start_broker(procs, tmp_path)
    port = free_port()
    env = as_env(peer_settings(broker, port))
    assert env["CE_QUEUES"] == "work,idle,spare"
    assert env["CE_STATIC_LABEL"] == "env=test team=core"
    exporter = ExporterProcess(procs, broker.exporter_url, env={**env, **OUR_TEST_KNOBS},
                               port=port, own_flags=False).start()  # fmt: skip
    assert exporter.argv()[3:] == []
    assert_peer_semantics(run_peer_workload(procs, broker, exporter))
    assert "Traceback" not in exporter.log_text()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--accept-content", "pickle"], {}),
        (["--accept-content=json,pickle"], {}),  # the peer's own --help example
        ([], {"CE_ACCEPT_CONTENT": "pickle"}),
        ([], {"CE_ACCEPT_CONTENT": "json,application/x-python-serialize"}),
    ],
)
def test_pickle_is_refused_with_one_line(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "exporter", "--broker-url=redis://127.0.0.1:1/0", *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **env},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--accept-content" in lines[0] and "only json is accepted" in lines[0]
    assert "pickle" in lines[0] or "x-python-serialize" in lines[0]
    assert result.stdout == ""


def test_broker_ssl_options_turn_tls_on_for_a_redis_url(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The peer hands --broker-ssl-option to Celery as broker_use_ssl, and kombu then speaks
    # TLS to a redis:// broker too: the same command line must reach the same TLS Redis.
    broker = start_broker(procs, tmp_path)
    port = free_port()
    args = [
        f"--broker-url=redis://127.0.0.1:{broker.redis.port}/0",
        "--broker-ssl-option=ssl_cert_reqs=required",
        f"--broker-ssl-option=ssl_ca_certs={broker.ca}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    exporter = ExporterProcess(procs, "", args=args, env=OUR_TEST_KNOBS, port=port,
                               own_flags=False).start()  # fmt: skip
    assert exporter.scrape().value("celery_exporter_broker_up") == 1
