"""Run the real exporter as a subprocess and read its /metrics like Prometheus would: with
Prometheus' Accept header and gzip, so OpenMetrics, parsed by the strict OpenMetrics parser."""

from __future__ import annotations

import base64
import gzip
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

from exporter.negotiate import PROMETHEUS_ACCEPT
from tests.support.procs import PYTHON, ManagedProcess, ProcessTracker, free_port, wait_until


@dataclass
class Scrape:
    """Parsed exposition: sample name -> {frozenset(labels): value}, plus family types."""

    samples: dict[str, dict[frozenset[tuple[str, str]], float]]
    types: dict[str, str]
    text: str

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.samples.get(metric, {}).get(frozenset(labels.items()))

    def series(self, metric: str) -> dict[frozenset[tuple[str, str]], float]:
        return self.samples.get(metric, {})

    def total(self, metric: str, /, **labels: str) -> float:
        """Sum over every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for k, v in self.series(metric).items() if want <= k)


SCRAPE_HEADERS = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}


def parse(text: str) -> Scrape:
    """Either format: OpenMetrics (it ends with ``# EOF``) or text 0.0.4."""
    samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    types: dict[str, str] = {}
    parser = parse_om if text.endswith("# EOF\n") else text_string_to_metric_families
    for family in parser(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return Scrape(samples, types, text)


def http_get(
    url: str,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
    ca: Path | None = None,
) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = response.read()
            if response.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            return response.status, body.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class ExporterProcess:
    """``python -m exporter`` on a free port, pointed at a test's broker."""

    def __init__(
        self,
        tracker: ProcessTracker,
        broker_url: str,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        ca: Path | None = None,
        port: int | None = None,
        own_flags: bool = True,
    ) -> None:
        """``ca``: the exporter serves HTTPS (web config) with a certificate from this CA.

        ``own_flags=False``: the command line is ``args`` alone, without our --broker-url,
        --web.listen-address and speed-ups (a peer exporter's command line: it passes the
        broker and ``--port``/``--host`` itself, or sets them in ``env``); ``port`` is where
        it will listen then."""
        self.tracker = tracker
        self.ca = ca
        self.broker_url = broker_url
        self.port = port or free_port()
        self.own_flags = own_flags
        self.args = list(args)
        self.env = env or {}
        self.process: ManagedProcess | None = None

    def argv(self) -> list[str]:
        if not self.own_flags:
            return [PYTHON, "-m", "exporter", *self.args]
        return [
            PYTHON,
            "-m",
            "exporter",
            "--broker-url",
            self.broker_url,
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            "--broker-poll-interval",
            "0.5",
            "--inspect-interval",
            "0",
            *self.args,
        ]

    def start(self, wait_ready: bool = True) -> ExporterProcess:
        self.process = self.tracker.start(self.argv(), f"exporter-{self.port}", env=self.env)
        wait_until(self._healthy, timeout=20, message="exporter /healthz")
        if wait_ready:
            wait_until(lambda: self.get("/readyz")[0] == 200, timeout=20, message="exporter ready")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise RuntimeError(f"exporter exited:\n{self.process.log_text()[-3000:]}")
        return self.get("/healthz")[0] == 200

    def url(self, path: str = "/metrics") -> str:
        scheme = "https" if self.ca else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        kwargs.setdefault("ca", self.ca)
        return http_get(self.url(path), **kwargs)

    def scrape(self) -> Scrape:
        """/metrics as Prometheus asks for it (OpenMetrics, gzip)."""
        status, text = self.get("/metrics", headers=SCRAPE_HEADERS)
        assert status == 200, text
        return parse(text)

    def wait_for(self, predicate, timeout: float = 30.0, message: str = "metrics") -> Scrape:  # type: ignore[no-untyped-def]
        """Scrape until ``predicate(scrape)`` holds; return that scrape."""

        def check() -> Scrape | None:
            scrape = self.scrape()
            return scrape if predicate(scrape) else None

        return wait_until(check, timeout=timeout, interval=0.2, message=message)

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""


def event_envelope(events: dict | list[dict]) -> bytes:
    """A kombu envelope carrying ``events`` as Celery publishes them (base64 JSON body)."""
    return orjson.dumps(
        {
            "body": base64.b64encode(orjson.dumps(events)).decode(),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": {},
            "properties": {"body_encoding": "base64"},
        }
    )


def publish_corpus(client, lines: Iterable[dict]) -> int:  # type: ignore[no-untyped-def]
    """PUBLISH captured envelopes as the worker did; returns how many."""
    n = 0
    for line in lines:
        client.publish(line["channel"], line["data"])
        n += 1
    return n
