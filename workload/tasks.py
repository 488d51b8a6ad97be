"""The article's six tasks, made correct and configurable (docs/workload.md, "Failure paths").

Each task validates its arguments (PermanentError subclasses: dead-lettered at once) and
retries what may pass (TransientError subclasses) with a capped exponential backoff and full
jitter. ``fetch_data`` shows Celery's own form of that (``autoretry_for`` + ``retry_backoff``,
which takes a number, not a function); the others compute the countdown themselves so tests
can use sub-second delays.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import Any

import requests

from workload import accounts, datastore, images, mail, maintenance, reports
from workload.app import PURGE_EXPIRED_REPORTS, REFRESH_STATS, app, settings
from workload.dlq import DeadLetterTask
from workload.errors import (
    AccountLocked,
    FetchHttpError,
    FetchTooLarge,
    FetchTransientError,
    ImageDownloadError,
    ImageTooLarge,
    ImageTransientError,
    ReportTransientError,
    SmtpTransientError,
)
from workload.fetching import BodyTooLarge, fetch

# The part of a fetched JSON body returned as the task's result (results live in Redis).
MAX_RESULT_JSON_BYTES = 64 * 1024


def backoff(retries: int) -> float:
    """Seconds to wait before retry number ``retries + 1``: capped exponential, full jitter."""
    policy = settings.retry
    ceiling = min(policy.max_seconds, policy.base_seconds * (2**retries))
    return random.uniform(0, ceiling) if policy.jitter else ceiling


@app.task(bind=True, base=DeadLetterTask, max_retries=settings.report_max_retries)
def generate_report(self: DeadLetterTask, user_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """CPU-bound: statistics over the rows, written to a CSV report file."""
    request = reports.validate(user_id, data, settings.report_max_rows)
    if self.request.retries < request["fail_times"]:
        exc = ReportTransientError(
            f"injected transient failure {self.request.retries + 1} of {request['fail_times']}"
        )
        raise self.retry(exc=exc, countdown=backoff(self.request.retries))
    rows = request["rows"] or reports.generate_rows(user_id, request["size"])
    stats = reports.summarise(rows, settings.report_work_rounds)
    path = settings.report_dir / f"report-{user_id}-{self.request.id}.csv"
    try:
        size = reports.write(path, request["title"], rows, stats)
    except OSError as exc:  # a full or unavailable disk may recover
        raise self.retry(
            exc=ReportTransientError(f"cannot write {path}: {exc}"),
            countdown=backoff(self.request.retries),
        ) from None
    return {"path": str(path), "rows": len(rows), "bytes": size, "stats": stats}


@app.task(
    bind=True,
    base=DeadLetterTask,
    rate_limit=settings.email_rate_limit,
    max_retries=settings.email_max_retries,
)
def send_welcome_email(self: DeadLetterTask, address: str) -> dict[str, str]:
    """Send a real welcome email over SMTP; rate limited per worker."""
    recipient = mail.normalise_address(address)
    try:
        message_id = mail.send(settings.smtp, recipient)
    except SmtpTransientError as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from None
    return {"to": recipient, "message_id": message_id}


@app.task(bind=True, base=DeadLetterTask, max_retries=settings.image_max_retries)
def process_image(self: DeadLetterTask, url: str) -> dict[str, Any]:
    """Download an image (URL policy, timeout, size cap) and write a PNG thumbnail."""
    try:
        fetched = fetch(url, settings.url_policy, settings.http_timeout, settings.http_max_bytes)
    except BodyTooLarge as exc:
        raise ImageTooLarge(str(exc)) from None
    except requests.RequestException as exc:
        raise self.retry(
            exc=ImageTransientError(f"download failed: {type(exc).__name__}: {exc}"),
            countdown=backoff(self.request.retries),
        ) from None
    if fetched.transient_failure:
        raise self.retry(
            exc=ImageTransientError(f"image server answered {fetched.status}"),
            countdown=backoff(self.request.retries),
        )
    if not fetched.ok:
        raise ImageDownloadError(f"image server answered {fetched.status} for {fetched.url}")
    target = settings.thumbnail_dir / f"thumb-{self.request.id}.png"
    result = images.make_thumbnail(
        fetched.body, target, settings.thumbnail_size, settings.image_max_pixels
    )
    return {**result, "url": url, "source_bytes": len(fetched.body)}


@app.task(bind=True, base=DeadLetterTask, max_retries=settings.debit_max_retries)
def debit_account(
    self: DeadLetterTask, user_id: int | str, amount: int, idempotency_key: str
) -> dict[str, Any]:
    """Debit ``amount`` cents once per idempotency key, under the account's Redis lock."""
    account, cents, key = accounts.validate(user_id, amount, idempotency_key)
    try:
        return accounts.debit(
            datastore.client(settings),
            account,
            cents,
            key,
            opening_balance=settings.opening_balance,
            lock_ttl_ms=settings.lock_ttl_ms,
            hold_seconds=settings.debit_hold_seconds,
        )
    except AccountLocked as exc:
        delay = settings.lock_retry_seconds
        raise self.retry(exc=exc, countdown=random.uniform(delay / 2, delay)) from None


@app.task(
    bind=True,
    base=DeadLetterTask,
    autoretry_for=(FetchTransientError,),
    # Celery wants a number here (the base in whole seconds), not a function; its
    # full-jitter backoff is capped by retry_backoff_max.
    retry_backoff=max(1, round(settings.retry.base_seconds)),
    retry_backoff_max=int(settings.retry.max_seconds),
    retry_jitter=settings.retry.jitter,
    max_retries=settings.fetch_max_retries,
)
def fetch_data(self: DeadLetterTask, endpoint: str) -> dict[str, Any]:
    """GET an HTTP endpoint; returns its status, size, digest and (small) JSON body."""
    try:
        fetched = fetch(
            endpoint, settings.url_policy, settings.http_timeout, settings.http_max_bytes
        )
    except BodyTooLarge as exc:
        raise FetchTooLarge(str(exc)) from None
    except requests.RequestException as exc:
        raise FetchTransientError(f"request failed: {type(exc).__name__}: {exc}") from None
    if fetched.transient_failure:
        raise FetchTransientError(f"{endpoint} answered {fetched.status}")
    if not fetched.ok:
        raise FetchHttpError(f"{endpoint} answered {fetched.status}")
    return {
        "url": fetched.url,
        "status": fetched.status,
        "bytes": len(fetched.body),
        "sha256": hashlib.sha256(fetched.body).hexdigest(),
        "content_type": fetched.content_type,
        "json": _small_json(fetched),
    }


def _small_json(fetched: Any) -> Any:
    if "json" not in fetched.content_type or len(fetched.body) > MAX_RESULT_JSON_BYTES:
        return None
    try:
        return json.loads(fetched.body)
    except ValueError:
        return None


@app.task(base=DeadLetterTask)
def dummy_task(i: int, sleep: float = 0.0) -> int:
    """The benchmark task: returns its argument (optionally after ``sleep`` seconds)."""
    if sleep:
        time.sleep(min(float(sleep), 60.0))
    return i


# --- periodic tasks (beat: workload/app.py's beat_schedule) -----------------------------------


@app.task(base=DeadLetterTask, name=REFRESH_STATS)
def refresh_stats() -> dict[str, Any]:
    """Snapshot queue lengths and parked dead letters into ``workload:stats`` (GET /stats)."""
    # Kept for three intervals: a stale snapshot disappears when beat stops.
    ttl = max(1, round(3 * settings.beat_refresh_stats_seconds))
    return maintenance.refresh_stats(datastore.broker(settings), datastore.client(settings), ttl)


@app.task(base=DeadLetterTask, name=PURGE_EXPIRED_REPORTS)
def purge_expired_reports() -> dict[str, int]:
    """Delete report files past WORKLOAD_REPORT_RETENTION, dead letters past _DLQ_RETENTION."""
    now = time.time()
    return {
        "reports_removed": maintenance.purge_report_files(
            settings.report_dir, now - settings.report_retention
        ),
        "dead_letters_removed": maintenance.purge_dead_letters(
            datastore.client(settings), now - settings.dlq_retention
        ),
    }
