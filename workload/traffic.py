"""``workload-traffic``: call the workload API at a steady rate with a realistic mix.

The mix (``--mix``) weighs five kinds of request: reports, welcome emails, thumbnails,
status look-ups of recent jobs, and invalid requests the API must reject (bad JSON, missing
fields, bad emails, disallowed URLs). ``--failure-ratio`` of the reports and thumbnails are
made to fail in the workers: some are retried and then succeed, some exhaust their retries
or fail permanently and end up in the dead-letter queue.

Thumbnails need images: by default the tool serves generated PNGs itself
(``--serve-images``, an ephemeral port on 127.0.0.1) — the API and the ``io`` workers must then
allow that host (``WORKLOAD_ALLOWED_HOSTS``, ``WORKLOAD_ALLOW_PRIVATE_NETWORKS=true``).
Every flag has an environment variable (``WORKLOAD_TRAFFIC_*``). Ctrl-C stops cleanly and
prints a summary; the last line on stdout is the summary as JSON.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import random
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click
import requests
from PIL import Image

KINDS = ("report", "email", "thumb", "status", "invalid")
DEFAULT_MIX = "report=3,email=2,thumb=3,status=2,invalid=1"
MAX_IMAGE_SIDE = 2000


def parse_mix(text: str) -> dict[str, float]:
    """``report=3,email=2`` → weights; unknown kinds or bad numbers are a usage error."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = part.partition("=")
        kind = kind.strip()
        if kind not in KINDS:
            raise click.BadParameter(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        try:
            weights[kind] = float(value)
        except ValueError:
            raise click.BadParameter(
                f"weight of {kind!r} must be a number, got {value!r}"
            ) from None
        if weights[kind] < 0:
            raise click.BadParameter(f"weight of {kind!r} must not be negative")
    if not any(weights.values()):
        raise click.BadParameter("the mix needs at least one positive weight")
    return weights


# --- the image server ---------------------------------------------------------------------------


class ImageServer:
    """Generated PNGs and scripted failures for thumbnails, over plain HTTP.

    ``/images/WxH.png`` a real image; ``/images/flaky-<n>.png`` 503 once, then the image;
    ``/images/broken.png`` always 500; ``/images/missing.png`` 404;
    ``/images/not-an-image.png`` 200 with text.
    """

    def __init__(self, host: str, port: int) -> None:
        self.cache: dict[tuple[int, int], bytes] = {}
        self.flaky_seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def png(self, width: int, height: int) -> bytes:
        with self.lock:
            if (width, height) not in self.cache:
                image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                self.cache[(width, height)] = buffer.getvalue()
            return self.cache[(width, height)]

    def first_time(self, path: str) -> bool:
        with self.lock:
            if path in self.flaky_seen:
                return False
            self.flaky_seen[path] = None
            if len(self.flaky_seen) > 10_000:
                self.flaky_seen.popitem(last=False)
            return True

    def reply(self, path: str) -> tuple[int, str, bytes]:
        name = path.rsplit("/", 1)[-1]
        if not path.startswith("/images/"):
            return 404, "text/plain", b"not found"
        if name == "broken.png":
            return 500, "text/plain", b"server error"
        if name == "not-an-image.png":
            return 200, "image/png", b"this is not a PNG"
        if name.startswith("flaky-") and self.first_time(path):
            return 503, "text/plain", b"try again"
        size = name.removeprefix("flaky-").removesuffix(".png")
        width, _, height = size.partition("x")
        if not (width.isdigit() and height.isdigit()):
            width, height = "320", "240"
        if not (0 < int(width) <= MAX_IMAGE_SIDE and 0 < int(height) <= MAX_IMAGE_SIDE):
            return 404, "text/plain", b"no such image"
        return 200, "image/png", self.png(int(width), int(height))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = server.reply(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> ImageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- what to send -------------------------------------------------------------------------------


@dataclass
class Request:
    kind: str
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None
    expect_rejection: bool = False


@dataclass
class Planner:
    """Builds the next request from the mix; remembers recent job ids for status look-ups."""

    weights: dict[str, float]
    failure_ratio: float
    image_base: str | None
    rng: random.Random
    recent: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def next(self) -> Request:
        kinds = [k for k in KINDS if self.weights.get(k, 0) > 0]
        if self.image_base is None:
            kinds = [k for k in kinds if k != "thumb"] or ["report"]
        kind = self.rng.choices(kinds, [self.weights[k] for k in kinds])[0]
        if kind == "status" and not self.recent:
            kind = "report"
        return getattr(self, f"_{kind}")()

    def failing(self) -> bool:
        return self.rng.random() < self.failure_ratio

    def _report(self) -> Request:
        data: dict[str, Any] = {"size": self.rng.randint(200, 5000)}
        if self.failing():
            # Half are retried and then succeed; half exhaust their retries (dead letters).
            data["fail_times"] = self.rng.choice([1, 2]) if self.rng.random() < 0.5 else 50
        return Request(
            "report", "POST", "/report", {"user_id": self.rng.randint(1, 1000), "data": data}
        )

    def _email(self) -> Request:
        return Request(
            "email", "POST", "/email", {"address": f"user{next(self.counter)}@example.com"}
        )

    def _thumb(self) -> Request:
        if self.failing():
            name = self.rng.choice(
                [f"flaky-{next(self.counter)}.png", "broken.png", "missing.png", "not-an-image.png"]
            )
        else:
            name = f"{self.rng.choice([320, 640, 1024])}x{self.rng.choice([240, 480, 768])}.png"
        return Request("thumb", "POST", "/thumb", {"url": f"{self.image_base}/images/{name}"})

    def _status(self) -> Request:
        return Request("status", "GET", f"/status/{self.rng.choice(self.recent)}")

    def _invalid(self) -> Request:
        choice = self.rng.randrange(5)
        if choice == 0:
            return Request("invalid", "POST", "/report", raw=b"{not json", expect_rejection=True)
        if choice == 1:
            return Request("invalid", "POST", "/report", {"data": {}}, expect_rejection=True)
        if choice == 2:
            return Request(
                "invalid", "POST", "/email", {"address": "no-at-sign"}, expect_rejection=True
            )
        if choice == 3:
            body = {"url": "ftp://example.com/a.png"}
            return Request("invalid", "POST", "/thumb", body, expect_rejection=True)
        return Request("invalid", "GET", "/status/not-a-job-id", expect_rejection=True)


# --- sending and counting -------------------------------------------------------------------------


@dataclass
class Tally:
    """What happened so far; updated from the sender threads."""

    sent: int = 0
    accepted: int = 0
    ok: int = 0
    rejected: int = 0
    unexpected: int = 0
    throttled: int = 0  # 429: the API's admission control refused a job (queue full)
    errors: int = 0
    skipped: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, request: Request, status: int | None) -> None:
        with self.lock:
            self.by_kind[request.kind] += 1
            if status is None or status >= 500:
                self.errors += 1
            elif status == 202:
                self.accepted += 1
            elif status < 300:
                self.ok += 1
            elif status == 429:
                self.throttled += 1
            elif request.expect_rejection:
                self.rejected += 1
            else:
                self.unexpected += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "sent": self.sent,
                "accepted": self.accepted,
                "ok": self.ok,
                "rejected_as_expected": self.rejected,
                "unexpected_4xx": self.unexpected,
                "throttled": self.throttled,
                "errors": self.errors,
                "skipped": self.skipped,
                "by_kind": dict(self.by_kind),
            }


class Runner:
    """Sends ``rate`` requests per second from a small thread pool until stopped."""

    def __init__(
        self,
        api: str,
        rate: float,
        duration: float,
        planner: Planner,
        timeout: float,
        concurrency: int,
        status_every: float,
    ) -> None:
        self.api = api.rstrip("/")
        self.rate = rate
        self.duration = duration
        self.planner = planner
        self.timeout = timeout
        self.concurrency = concurrency
        self.status_every = status_every
        self.tally = Tally()
        self.stop = threading.Event()
        self.local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.trust_env = False
        return self.local.session

    def send(self, request: Request) -> None:
        url = self.api + request.path
        status: int | None = None
        try:
            if request.raw is not None:
                response = self.session().request(
                    request.method,
                    url,
                    data=request.raw,
                    timeout=self.timeout,
                    headers={"Content-Type": "application/json"},
                )
            else:
                response = self.session().request(
                    request.method, url, json=request.body, timeout=self.timeout
                )
            status = response.status_code
            if status == 202:
                self.planner.recent.append(response.json()["job_id"])
        except (requests.RequestException, ValueError, KeyError):
            pass  # counted as an error below; the progress line shows it
        self.tally.record(request, status)

    def run(self) -> dict[str, Any]:
        started = last_status = time.monotonic()
        outstanding: set[Future[None]] = set()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="traffic") as pool:
            for number in itertools.count():
                due = started + number / self.rate
                if self.duration and due - started >= self.duration:
                    break
                if self.stop.wait(max(0.0, due - time.monotonic())):
                    break
                outstanding = {f for f in outstanding if not f.done()}
                self.tally.sent += 1
                if len(outstanding) >= self.concurrency * 4:
                    self.tally.skipped += 1  # the API is slower than the rate: do not pile up
                else:
                    outstanding.add(pool.submit(self.send, self.planner.next()))
                if time.monotonic() - last_status >= self.status_every:
                    last_status = time.monotonic()
                    self.progress(last_status - started)
            pool.shutdown(wait=True, cancel_futures=True)
        self.progress(time.monotonic() - started, final=True)
        return self.tally.snapshot()

    def progress(self, elapsed: float, final: bool = False) -> None:
        s = self.tally.snapshot()
        line = (
            f"traffic: {elapsed:6.1f}s sent={s['sent']} accepted={s['accepted']} ok={s['ok']} "
            f"rejected={s['rejected_as_expected']} unexpected4xx={s['unexpected_4xx']} "
            f"throttled={s['throttled']} errors={s['errors']} skipped={s['skipped']} "
            f"({s['sent'] / max(elapsed, 1e-9):.1f}/s)"
        )
        tty = sys.stderr.isatty()
        sys.stderr.write(("\r" if tty else "") + line + ("\n" if final or not tty else ""))
        sys.stderr.flush()


# --- the command --------------------------------------------------------------------------------


def parse_bind(text: str) -> tuple[str, int] | None:
    if text.lower() in {"off", "no", "none", ""}:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT or 'off', got {text!r}")
    return host.strip("[]"), int(port)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--api-url",
    envvar="WORKLOAD_TRAFFIC_API_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of the workload API.",
)
@click.option(
    "--rate",
    envvar="WORKLOAD_TRAFFIC_RATE",
    type=click.FloatRange(min=0.01),
    default=2.0,
    show_default=True,
    help="Requests per second.",
)
@click.option(
    "--duration",
    envvar="WORKLOAD_TRAFFIC_DURATION",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to run; 0 runs until Ctrl-C.",
)
@click.option(
    "--mix",
    envvar="WORKLOAD_TRAFFIC_MIX",
    default=DEFAULT_MIX,
    show_default=True,
    callback=lambda _ctx, _param, value: parse_mix(value),
    help=f"Weights of the request kinds ({', '.join(KINDS)}).",
)
@click.option(
    "--failure-ratio",
    envvar="WORKLOAD_TRAFFIC_FAILURE_RATIO",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Share of reports and thumbnails made to fail or retry in the workers.",
)
@click.option(
    "--serve-images",
    envvar="WORKLOAD_TRAFFIC_SERVE_IMAGES",
    default="127.0.0.1:0",
    show_default=True,
    callback=lambda _ctx, _param, value: parse_bind(value),
    help="HOST:PORT to serve thumbnail sources on, or 'off'.",
)
@click.option(
    "--image-base-url",
    envvar="WORKLOAD_TRAFFIC_IMAGE_BASE_URL",
    default=None,
    help="Base URL workers fetch images from (default: the served address).",
)
@click.option(
    "--concurrency",
    envvar="WORKLOAD_TRAFFIC_CONCURRENCY",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Requests in flight at most.",
)
@click.option(
    "--timeout",
    envvar="WORKLOAD_TRAFFIC_TIMEOUT",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for one API answer.",
)
@click.option(
    "--status-every",
    envvar="WORKLOAD_TRAFFIC_STATUS_EVERY",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between progress lines.",
)
@click.option(
    "--seed",
    envvar="WORKLOAD_TRAFFIC_SEED",
    type=int,
    default=None,
    help="Random seed, for a repeatable mix.",
)
def main(
    api_url: str,
    rate: float,
    duration: float,
    mix: dict[str, float],
    failure_ratio: float,
    serve_images: tuple[str, int] | None,
    image_base_url: str | None,
    concurrency: int,
    timeout: float,
    status_every: float,
    seed: int | None,
) -> None:
    """Call the workload API at --rate requests/s with a realistic mix of jobs."""
    try:
        server = ImageServer(*serve_images).start() if serve_images else None
    except OSError as exc:
        raise click.ClickException(f"cannot serve images on {serve_images}: {exc}") from None
    if server and not image_base_url:
        host, port = server.address
        image_base_url = f"http://{host}:{port}"
    if server:
        click.echo(f"traffic: serving images at {image_base_url}/images/", err=True)
    planner = Planner(mix, failure_ratio, image_base_url, random.Random(seed))
    runner = Runner(api_url, rate, duration, planner, timeout, concurrency, status_every)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runner.stop.set())
    try:
        summary = runner.run()
    finally:
        if server:
            server.stop()
    click.echo(json.dumps(summary, sort_keys=True))
    if summary["errors"] and not (
        summary["accepted"] or summary["ok"] or summary["rejected_as_expected"]
    ):
        raise click.ClickException(f"the API at {api_url} never answered; is it running?")
