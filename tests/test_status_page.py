"""The exporter's status page (``/``) in headless Chromium against a real stack.

Redis, a real workload worker and the real exporter run; the page is loaded in Debian's
chromium and every figure it shows is compared with ``/metrics`` scraped at the same moment.
Set ``STATUS_PAGE_SCREENSHOT=docs/status-page.png`` to refresh the committed screenshot.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter.collector import SourceStatus, families, gather
from exporter.inspector import InspectView
from exporter.poller import BrokerView
from exporter.state import State
from exporter.status import status_document
from tests.support.browser import Browser, StatusPage, figure, find_chromium
from tests.support.celery_client import client_app
from tests.support.exporter import ExporterProcess, Scrape
from tests.support.procs import CeleryWorker, celery_env, wait_until

ROOT = Path(__file__).resolve().parents[1]
WORKER = "default@status-page"
BACKLOG = 7  # generate_report messages on "cpu", which no worker consumes
SUCCEED, FAIL, MORE, MORE_FAIL = 12, 3, 5, 1
DUMMY = "workload.tasks.dummy_task"
# Page figure -> the /metrics series it must equal (labels from the figure's data-* attributes).
PER_QUEUE = {
    "queue_length": "celery_queue_length",
    "queue_consumers": "celery_active_consumer_count",
    "queue_scheduled": "celery_queue_scheduled_messages",
}
PER_WORKER = {
    "worker_up": "celery_worker_up",
    "worker_active": "celery_worker_tasks_active",
    "worker_processed": "celery_worker_tasks_processed",
}
SINGLE = {
    "broker_up": "celery_exporter_broker_up",
    "events_rejected_total": "celery_exporter_events_rejected_total",
    "events_dropped_total": "celery_exporter_events_dropped_total",
    "tracked_tasks": "celery_exporter_tracked_tasks",
    "unacked": "celery_broker_unacked_messages",
}
needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="chromium is not installed (apt-get install chromium)"
)


# ---------------------------------------------------------------------- the API's document


def _view(state: State, inspect: InspectView) -> Any:
    broker = BrokerView(up=True, polled_at=99.0, lengths={"cpu": 4, "email": 0},
                        oldest_age={"cpu": 12.5})  # fmt: skip
    return gather(state, broker, inspect, SourceStatus(True, 0, 2), 3600.0, "1.0", "5.7")


def test_status_document_reports_consumers_like_metrics_and_the_page_fields() -> None:
    state = State()
    # A clock a little behind the events' own timestamps must not give a negative lag.
    state.apply([{"type": "worker-heartbeat", "hostname": "w@h", "timestamp": time.time() + 5,
                  "freq": 2.0, "active": 1, "processed": 3}], received=time.time())  # fmt: skip

    def document(inspect: InspectView) -> dict[str, Any]:
        view = _view(state, inspect)
        return status_document(families(view), view.state.now, started_at=0.0)

    before = document(InspectView())
    assert [q["consumers"] for q in before["queues"]] == [None, None]  # unknown, not 0

    after = document(InspectView(at=1.0, workers={"email": 2}))
    assert {q["name"]: q["consumers"] for q in after["queues"]} == {"cpu": 0, "email": 2}
    assert after["events_dropped_total"] == 2
    assert after["visibility_timeout_seconds"] == 3600.0
    assert after["event_lag_seconds"] == 0.0
    assert after["workers"][0]["hostname"] == "w@h" and after["workers"][0]["up"] is True
    assert after["workers"][0]["state"] == "online"
    assert after["broker_up"] is True and after["version"] == "1.0"


# ---------------------------------------------------------------------- in the browser


@pytest.fixture
def browser(procs, tmp_path) -> Browser:  # type: ignore[no-untyped-def]
    return Browser(procs, tmp_path / "chromium-profile")


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _mismatches(page: dict[str, Any], scrape: Scrape) -> list[str]:
    """Every figure on the page that differs from /metrics (value and the text shown)."""
    wrong = []

    def compare(shown: dict[str, str], expected: float | None) -> None:
        value = float(shown["value"]) if shown["value"] else None
        # A state is said in words; "active / pool size" starts with the active count.
        text_ok = shown["metric"] in ("worker_up", "broker_up") or (
            _number(shown["text"].split(" / ")[0]) == value
        )
        if value != expected or not text_ok:
            wrong.append(f"{shown} != {expected}")

    queues = {f["queue"] for f in page["figures"] if f["metric"] == "queue_length"}
    if queues != {dict(k)["queue_name"] for k in scrape.series("celery_queue_length")}:
        wrong.append(f"queues {queues}")
    for f in page["figures"]:
        metric = f["metric"]
        if metric in PER_QUEUE:
            compare(f, scrape.value(PER_QUEUE[metric], queue_name=f["queue"]))
        elif metric in PER_WORKER:
            compare(f, scrape.value(PER_WORKER[metric], hostname=f["hostname"]))
        elif metric in SINGLE:
            compare(f, scrape.total(SINGLE[metric]))
        elif metric == "tasks_total":
            compare(f, scrape.total(f"celery_task_{f['type']}_total"))
        elif metric == "worker_lost_tasks":
            compare(f, scrape.total("celery_task_lost_total", hostname=f["hostname"]))
    return wrong


def _assert_page_matches_metrics(status: StatusPage, exporter: ExporterProcess) -> dict:
    """Poll until one reading of the page equals a scrape taken right after it.

    The page shows the API's answer from up to one refresh ago, so a heartbeat landing in
    between may differ for a moment; a page that shows wrong numbers never matches.
    """
    last: list[str] = []

    def matches() -> dict[str, Any] | None:
        page = status.read()
        last[:] = _mismatches(page, exporter.scrape())
        return None if last else page

    try:
        return wait_until(matches, timeout=10, interval=0.3, message="page == /metrics")
    except AssertionError as exc:
        raise AssertionError(f"status page differs from /metrics: {last}") from exc


def _send_tasks(app, n: int, fail: bool = False) -> None:  # type: ignore[no-untyped-def]
    for i in range(n):
        # A sleep that is not a number makes dummy_task raise ValueError (and dead-letter).
        kwargs = {"sleep": "not-a-number"} if fail else {}
        app.send_task(DUMMY, (i,), kwargs, queue="default")


def _row(browser: Browser, metric: str, attribute: str, key: str) -> list[str]:
    """The class of the row holding a figure, and the text of its last cell."""
    return browser.evaluate(
        f'(() => {{ const tr = document.querySelector(\'[data-metric="{metric}"]'
        f'[data-{attribute}="{key}"]\').closest("tr");'
        " return [tr.className, tr.lastElementChild.textContent]; })()"
    )


@needs_chromium
def test_status_page_shows_the_numbers_metrics_has(procs, redis_server, browser, tmp_path) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(
        procs, redis_server.url(0),
        args=["--inspect-interval", "1", "--queues", "cpu,default,dead_letter"],
    ).start()  # fmt: skip
    CeleryWorker(procs, celery_env(redis_server), queues=["default"], nodename=WORKER).start()
    app = client_app(redis_server)
    for user in range(BACKLOG):
        app.send_task("workload.tasks.generate_report", (user, {}), queue="cpu")
    _send_tasks(app, SUCCEED)
    _send_tasks(app, FAIL, fail=True)
    exporter.wait_for(
        lambda s: (
            s.total("celery_task_succeeded_total", name=DUMMY) == SUCCEED
            and s.total("celery_task_failed_total", name=DUMMY) == FAIL
            and s.value("celery_queue_length", queue_name="dead_letter") == FAIL
            and s.value("celery_active_consumer_count", queue_name="default") == 1
        ),
        message="the workload's tasks counted and the dead letters queued",
    )
    status = StatusPage(browser)

    # Rates need two refreshes: with a slow refresh the first one shows "—".
    browser.open(exporter.url("/?refresh=60"))
    first = status.wait(lambda p: p["refreshes"] == 1, message="first refresh")
    assert first["state"] == "ok" and first["problem"] == ""
    for metric in ("succeeded_per_second", "failed_per_second", "events_per_second"):
        assert figure(first, metric)["text"] == "—", metric
    assert figure(first, "tasks_per_second", type="succeeded")["text"] == "—"
    assert figure(first, "queue_length", queue="cpu")["text"] == str(BACKLOG)

    browser.open(exporter.url("/?refresh=1"))
    status.wait(lambda p: p["refreshes"] >= 2, message="second refresh")
    _send_tasks(app, MORE)
    _send_tasks(app, MORE_FAIL, fail=True)
    page = status.wait(
        lambda p: (
            figure(p, "tasks_total", type="succeeded")["value"] == str(SUCCEED + MORE)
            and figure(p, "tasks_total", type="failed")["value"] == str(FAIL + MORE_FAIL)
        ),
        message="the new tasks counted",
    )
    # Those finished within the rate window: rates above 0 and a failure ratio shown.
    assert float(figure(page, "succeeded_per_second")["value"]) > 0
    assert figure(page, "succeeded_per_second")["text"].endswith("/s")
    assert float(figure(page, "failed_per_second")["value"]) > 0
    ratio = figure(page, "failure_ratio")
    percent, unit, *high = ratio["text"].split()
    assert 0 < float(ratio["value"]) < 1 and unit == "%"
    assert abs(float(percent) - 100 * float(ratio["value"])) <= 0.05
    assert high == (["high"] if float(percent) > 5 else [])

    exporter.wait_for(lambda s: s.value("celery_queue_length", queue_name="dead_letter")
                      == FAIL + MORE_FAIL, message="the new dead letter queued")  # fmt: skip
    page = _assert_page_matches_metrics(status, exporter)
    assert figure(page, "queue_length", queue="cpu")["text"] == str(BACKLOG)
    assert figure(page, "queue_consumers", queue="cpu")["text"] == "0"
    assert _row(browser, "queue_length", "queue", "cpu") == ["bad", "no consumer"]
    assert _row(browser, "queue_length", "queue", "default")[1] == "ok"
    assert float(figure(page, "queue_oldest_age_seconds", queue="cpu")["value"]) > 0
    assert figure(page, "worker_up", hostname=WORKER)["text"] == "up"
    assert figure(page, "tasks_total", type="failed")["text"] == str(FAIL + MORE_FAIL)
    assert figure(page, "queue_length", queue="dead_letter")["text"] == str(FAIL + MORE_FAIL)
    assert figure(page, "broker_up")["text"] == "up"

    shot = Path(os.environ.get("STATUS_PAGE_SCREENSHOT") or tmp_path / "status-page.png")
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

    # The exporter goes away: the page says so and keeps the last figures it had.
    exporter.process.stop()  # type: ignore[union-attr]
    gone = status.wait(lambda p: p["state"] == "error", message="unreachable message")
    assert gone["problem"] == "unreachable"
    assert "Cannot reach the exporter" in gone["message"]
    assert figure(gone, "queue_length", queue="cpu")["text"] == str(BACKLOG)


@needs_chromium
def test_status_page_says_when_the_api_refuses_its_credentials(procs, redis_server, browser,
                                                               tmp_path) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"page-secret", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users:\n  viewer: '{hashed}'\n")
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--web.config-file", str(web)])
    exporter.start(wait_ready=False)
    credentials = base64.b64encode(b"viewer:page-secret").decode()
    browser.set_headers({"Authorization": f"Basic {credentials}"})
    browser.open(exporter.url("/?refresh=1"))
    status = StatusPage(browser)
    status.wait(lambda p: p["state"] == "ok" and figure(p, "broker_up")["text"] == "up",
                message="the page with credentials")  # fmt: skip

    browser.cancel_auth_prompts("*/api/status*")  # the user dismisses the login dialog
    browser.set_headers({})  # as if the password were rotated while the page stays open
    refused = status.wait(lambda p: p["state"] == "error", message="the 401 message")
    assert refused["problem"] == "unauthorized"
    assert "HTTP 401" in refused["message"] and "sign in" in refused["message"]
