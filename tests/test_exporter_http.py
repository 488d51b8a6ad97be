"""/metrics content negotiation: Prometheus text, OpenMetrics by Accept, gzip on request."""

from __future__ import annotations

import gzip
import json
import urllib.request
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from tests.support.exporter import ExporterProcess, parse, publish_corpus

CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "corpus" / "celery-5.7-events.jsonl")
    .read_text()
    .splitlines()
]


def fetch(url: str, **headers: str) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(response.headers), response.read()


def test_openmetrics_and_text_agree_and_gzip_is_honoured(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    publish_corpus(redis_server.client(), CORPUS)
    text = exporter.wait_for(lambda s: s.total("celery_task_succeeded_total") == 3)

    headers, body = fetch(exporter.url(), Accept="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    families = {f.name: f for f in parse_om(body.decode())}
    succeeded = {
        frozenset(s.labels.items()): s.value
        for s in families["celery_task_succeeded"].samples
        if s.name == "celery_task_succeeded_total"
    }
    assert succeeded == text.series("celery_task_succeeded_total")
    assert families["celery_task_runtime"].type == "histogram"

    headers, body = fetch(exporter.url(), **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    unzipped = parse(gzip.decompress(body).decode())
    assert unzipped.series("celery_task_failed_total") == text.series("celery_task_failed_total")

    status, _ = exporter.get("/nope")
    assert status == 404
