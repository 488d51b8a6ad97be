"""Realistic Celery event envelopes, built like kombu/Celery 5.7 build them.

Shared by the ingest, scrape and memory benchmarks. The shapes follow the real messages in
tests/corpus (captured from a Celery 5.7 worker): a producer's ``task-sent`` is published
on its own, a worker's task events are batched in ``task.multi`` lists, and heartbeats are
single events.
"""

from __future__ import annotations

import base64
import random
import time
import uuid as uuidlib
from collections.abc import Iterator

import orjson

TASK_NAMES = [f"workload.tasks.task_{i}" for i in range(20)]
QUEUES = ["cpu", "io", "email", "default"]
EXCEPTIONS = ["ValueError('bad input')", "KeyError('user')", "TimeoutError()"]


def envelope(body: object, routing_key: str, hostname: str) -> bytes:
    """A kombu message as published on ``/0.celeryev/<routing_key>``."""
    return orjson.dumps(
        {
            "body": base64.b64encode(orjson.dumps(body)).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"hostname": hostname},
            "properties": {
                "delivery_mode": 1,
                "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuidlib.uuid4()),
            },
        }
    )


def _base(kind: str, hostname: str, clock: int, ts: float) -> dict[str, object]:
    return {"hostname": hostname, "utcoffset": 0.0, "pid": 4242, "clock": clock,
            "timestamp": ts, "type": kind}  # fmt: skip


class Stream:
    """An endless, deterministic stream of (channel, envelope, events in it) triples.

    ``hosts`` workers each run tasks through sent -> received -> started -> succeeded
    (5% fail, 3% retry first); every ``heartbeat_every`` tasks a heartbeat goes out.
    ``distinct`` > 0 recycles task ids after that many (bounded memory in the exporter);
    0 makes every id new.
    """

    def __init__(self, hosts: int = 4, seed: int = 7, batch: int = 4) -> None:
        self.rng = random.Random(seed)
        self.hosts = [f"worker{i}@bench-{i % 2}" for i in range(hosts)]
        self.batch = batch
        self.clock = 0

    def _sent(self, task_id: str, name: str, queue: str, ts: float) -> dict[str, object]:
        event = _base("task-sent", "gen77@web-1", 1, ts)
        event.update(uuid=task_id, root_id=task_id, parent_id=None, name=name, args="(1,)",
                     kwargs="{}", retries=0, eta=None, expires=None, queue=queue,
                     exchange="", routing_key=queue)  # fmt: skip
        return event

    def _worker_events(self, task_id: str, name: str, host: str, ts: float) -> list[dict]:
        self.clock += 4
        received = _base("task-received", host, self.clock, ts)
        received.update(uuid=task_id, name=name, args="(1,)", kwargs="{}", root_id=task_id,
                        parent_id=None, retries=0, eta=None, expires=None)  # fmt: skip
        started = _base("task-started", host, self.clock + 1, ts + 0.001)
        started["uuid"] = task_id
        roll = self.rng.random()
        if roll < 0.05:
            done = _base("task-failed", host, self.clock + 2, ts + 0.01)
            done.update(uuid=task_id, exception=self.rng.choice(EXCEPTIONS),
                        traceback="Traceback (most recent call last):\n  ...")  # fmt: skip
        else:
            done = _base("task-succeeded", host, self.clock + 2, ts + 0.01)
            done.update(uuid=task_id, result="None", runtime=self.rng.random() / 10)
        return [received, started, done]

    def messages(self, heartbeat_every: int = 50) -> Iterator[tuple[str, bytes, int]]:
        pending: dict[str, list[dict]] = {h: [] for h in self.hosts}
        n = 0
        while True:
            n += 1
            ts = time.time()
            task_id = str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))
            name = self.rng.choice(TASK_NAMES)
            queue = QUEUES[TASK_NAMES.index(name) % len(QUEUES)]
            host = self.hosts[n % len(self.hosts)]
            yield "/0.celeryev/task.sent", envelope(self._sent(task_id, name, queue, ts),
                                                    "task.sent", "gen77@web-1"), 1  # fmt: skip
            pending[host].extend(self._worker_events(task_id, name, host, ts))
            if len(pending[host]) >= self.batch * 3:
                batch, pending[host] = pending[host], []
                yield "/0.celeryev/task.multi", envelope(batch, "task.multi", host), len(batch)
            if n % heartbeat_every == 0:
                hb = _base("worker-heartbeat", host, self.clock, ts)
                hb.update(freq=2.0, active=1, processed=n, loadavg=[0.5, 0.4, 0.3],
                          sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux")  # fmt: skip
                yield "/0.celeryev/worker.heartbeat", envelope(hb, "worker.heartbeat", host), 1
