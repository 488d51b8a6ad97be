"""The workload's HTTP API (Flask, served by gunicorn): submit jobs and ask for their status.

``POST /report``, ``/email``, ``/thumb`` → 202 ``{"job_id", "status_url"}``;
``GET /status/<job_id>`` → queued / started / retrying / succeeded (result) / failed (error);
``GET /stats`` (queue lengths from the periodic refresh_stats, admission limits);
``GET /healthz`` (process alive), ``GET /readyz`` (Redis reachable).

Every answer is JSON, gunicorn's own protocol errors included (workload/gunicorn_worker.py).
Input errors are 400 (not JSON, malformed body or job id), 413 (body over the cap, chunked or
not) or 422 (wrong types, missing or unknown fields, bad email, URL outside the policy), an id
this API never issued is 404, a queue over its backlog limit is 429 with ``Retry-After``, and a
Redis that cannot be reached is 503 — never a 500 with a traceback.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from typing import Any

import click
import redis
from flask import Flask, Response, g, jsonify, request
from gunicorn.http.errors import NoMoreData, ParseException
from kombu.exceptions import OperationalError
from werkzeug.exceptions import HTTPException

from workload import admission, datastore, dlq, logs, mail, maintenance, queues, reports, urls
from workload.app import app as celery_app
from workload.app import settings
from workload.errors import PermanentError

JOB_KEY = f"{datastore.KEY_PREFIX}api:job:"
# Matched with fullmatch: "$" would also accept a trailing newline.
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STATES = {
    "PENDING": "queued",
    "RECEIVED": "queued",
    "STARTED": "started",
    "RETRY": "retrying",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "REVOKED": "failed",
    "REJECTED": "failed",
}
UNAVAILABLE = (redis.RedisError, OperationalError, OSError)

log = logs.get_logger("workload.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> tuple[Response, int]:
    response = jsonify({"error": message, "status": status})
    response.headers.update(headers or {})
    return response, status


# --- request bodies ---------------------------------------------------------------------------


def json_object(allowed: set[str], required: set[str]) -> dict[str, Any]:
    """The request's JSON object, checked for required and unknown fields."""
    if not request.is_json:
        raise ApiError(400, "the body must be JSON sent with Content-Type: application/json")
    try:
        body = json.loads(read_body(settings.api_max_body_bytes))
    except (ValueError, RecursionError):  # includes bad UTF-8 and absurd nesting
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object")
    missing = sorted(required - body.keys())
    if missing:
        raise ApiError(422, f"missing field(s): {', '.join(missing)}")
    unknown = sorted(body.keys() - allowed)
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(unknown)[:200]}")
    return body


def read_body(limit: int) -> bytes:
    """The request body, at most ``limit`` bytes, whether sized or chunked.

    A declared Content-Length over the limit is refused before reading; a chunked body is read
    up to one byte past the limit, so a large one is refused without being buffered. A body
    gunicorn cannot parse (a bad chunk size, a connection closed mid-body) is the client's
    error, a 400.
    """
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    if request.content_length is None and "wsgi.input_terminated" not in request.environ:
        return b""  # a server that does not end the stream itself: never block on it
    try:
        data = request.environ["wsgi.input"].read(limit + 1)
    except (ParseException, NoMoreData) as exc:
        raise ApiError(400, f"malformed request body: {exc}"[:300]) from None
    if len(data) > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    return data


def validated(check: Any, *args: Any) -> Any:
    """Run a task's own validator; its PermanentError becomes a 422 with the same message."""
    try:
        return check(*args)
    except PermanentError as exc:
        raise ApiError(422, str(exc)) from None


backlogs = admission.BacklogCache(settings.api_backlog_cache_ms / 1000)


def admit(task_name: str) -> None:
    """429 with Retry-After when the task's queue is over its backlog limit."""
    queue = queues.queue_of(task_name)
    try:
        admission.admit(
            datastore.broker(settings), queue, settings.api_backlog_limits.get(queue, 0), backlogs
        )
    except admission.Backlogged as full:
        log.warning("queue full", queue=queue, length=full.length, limit=full.limit)
        raise ApiError(429, str(full), {"Retry-After": str(settings.api_retry_after)}) from None


def submit(task_name: str, args: list[Any]) -> tuple[Response, int]:
    admit(task_name)
    job_id = str(uuid.uuid4())
    g.job_id = job_id
    # Remember the id first, so /status can tell "never issued" (404) from "queued".
    datastore.client(settings).set(JOB_KEY + job_id, task_name, ex=settings.result_expires)
    celery_app.send_task(task_name, args=args, task_id=job_id)
    response = jsonify({"job_id": job_id, "status_url": f"/status/{job_id}"})
    response.headers["Location"] = f"/status/{job_id}"
    return response, 202


# --- status -----------------------------------------------------------------------------------


def describe_error(exc: Any) -> dict[str, str]:
    if isinstance(exc, BaseException):
        return {"type": type(exc).__name__, "message": str(exc)[:2000]}
    return {"type": "Error", "message": str(exc)[:2000]}


def job_status(job_id: str) -> dict[str, Any]:
    result = celery_app.AsyncResult(job_id)
    state = result.state
    body: dict[str, Any] = {
        "job_id": job_id,
        "status": STATES.get(state, "queued"),
        "state": state,
    }
    if state == "SUCCESS":
        body["result"] = result.result
    elif state in {"FAILURE", "RETRY", "REVOKED", "REJECTED"}:
        body["error"] = describe_error(result.result)
    if state == "FAILURE":
        body["dead_letter"] = bool(datastore.client(settings).hexists(dlq.LETTERS_KEY, job_id))
    return body


# --- the application --------------------------------------------------------------------------


def register_routes(flask_app: Flask) -> None:
    @flask_app.post("/report")
    def post_report() -> tuple[Response, int]:
        body = json_object({"user_id", "data"}, {"user_id"})
        data = body.get("data", {})
        validated(reports.validate, body["user_id"], data, settings.report_max_rows)
        return submit("workload.tasks.generate_report", [body["user_id"], data])

    @flask_app.post("/email")
    def post_email() -> tuple[Response, int]:
        body = json_object({"address"}, {"address"})
        address = validated(mail.normalise_address, body["address"])
        return submit("workload.tasks.send_welcome_email", [address])

    @flask_app.post("/thumb")
    def post_thumb() -> tuple[Response, int]:
        body = json_object({"url"}, {"url"})
        url = validated(urls.check_url, body["url"], settings.url_policy)
        return submit("workload.tasks.process_image", [url])

    @flask_app.get("/status/<job_id>")
    def get_status(job_id: str) -> Response:
        if not JOB_ID.fullmatch(job_id):
            raise ApiError(400, "malformed job id: expected a lowercase UUID")
        if not datastore.client(settings).exists(JOB_KEY + job_id):
            raise ApiError(404, f"no job {job_id} (unknown, or older than its result expiry)")
        return jsonify(job_status(job_id))

    @flask_app.get("/stats")
    def stats() -> Response:
        snapshot = maintenance.read_stats(datastore.client(settings))
        return jsonify(
            {
                "queues": {
                    queue: {
                        "length": snapshot.get(f"queue:{queue}"),
                        "limit": settings.api_backlog_limits.get(queue),
                    }
                    for queue in queues.QUEUES
                },
                "dead_letters": snapshot.get("dead_letters"),
                # None until beat's refresh_stats has run (the snapshot expires without it).
                "refreshed_at": snapshot.get("refreshed_at"),
            }
        )

    @flask_app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @flask_app.get("/readyz")
    def readyz() -> Response:
        datastore.client(settings).ping()
        return jsonify({"status": "ready"})


def register_error_handlers(flask_app: Flask) -> None:
    @flask_app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int]:
        return error_response(exc.status, exc.message, exc.headers)

    @flask_app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return error_response(exc.code or 400, exc.description or exc.name)

    @flask_app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        if isinstance(exc, UNAVAILABLE):
            log.warning("redis unavailable", path=request.path, error=str(exc)[:500])
            return error_response(503, "the job store (Redis) is unavailable; try again later")
        log.exception("unhandled error", path=request.path)
        return error_response(500, "internal error; see the API log")


def create_app() -> Flask:
    """WSGI factory: ``gunicorn 'workload.api:create_app()'``."""
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    flask_app = Flask("workload.api")
    flask_app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body_bytes
    flask_app.json.sort_keys = False  # type: ignore[attr-defined]
    logs.install_request_logging(flask_app)
    register_routes(flask_app)
    register_error_handlers(flask_app)
    return flask_app


def _without_control_socket() -> list[str]:
    """Recent gunicorn opens a control socket in $HOME by default; several APIs on one host
    (tests, the local stack) would share that path, and nothing here uses it."""
    from gunicorn.config import KNOWN_SETTINGS

    known = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in known else []


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--bind",
    envvar="WORKLOAD_API_BIND",
    default="127.0.0.1:8000",
    show_default=True,
    help="Address gunicorn listens on.",
)
@click.option(
    "--workers",
    envvar="WORKLOAD_API_WORKERS",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="gunicorn worker processes.",
)
@click.option(
    "--threads",
    envvar="WORKLOAD_API_THREADS",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Threads per worker.",
)
@click.option(
    "--timeout",
    envvar="WORKLOAD_API_TIMEOUT",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Seconds before gunicorn restarts a stuck worker.",
)
def main(bind: str, workers: int, threads: int, timeout: int) -> None:
    """Serve the API with gunicorn, JSON error pages included (the same as:
    gunicorn -k workload.gunicorn_worker.JsonErrorWorker -b BIND 'workload.api:create_app()')."""
    import os

    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", bind,
        "--workers", str(workers),
        "--threads", str(threads),
        "--timeout", str(timeout),
        "--worker-class", "workload.gunicorn_worker.JsonErrorWorker",
        *_without_control_socket(),
        "workload.api:create_app()",
    ]  # fmt: skip
    os.execv(sys.executable, argv)  # noqa: S606 - gunicorn takes over this process and its signals
