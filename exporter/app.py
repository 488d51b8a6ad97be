"""Wiring: sources -> state -> collector -> HTTP, and their threads' lifecycle."""

from __future__ import annotations

import os
import sys
import threading
import time
from importlib import resources
from typing import Any

import celery
import structlog
from celery import Celery
from kombu import Connection
from prometheus_client import CollectorRegistry, generate_latest, openmetrics
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__, broker
from exporter.collector import ScrapeView, SourceStatus, families, gather
from exporter.config import Config
from exporter.exposition import CONTENT_TYPES, OPENMETRICS, Renderer, exposition
from exporter.http import Endpoints, ExporterApp, RequestPriority, reload_web_config
from exporter.httpserver import HttpServer
from exporter.inspector import InspectorThread, InspectView
from exporter.logs import mask_url
from exporter.poller import AmqpBrokerPoller, PollerThread, RedisBrokerPoller
from exporter.sources.celery_receiver import ReceiverEventSource
from exporter.sources.redis_pubsub import RedisEventSource
from exporter.state import UNKNOWN, State, merge_pools
from exporter.status import status_document
from exporter.webconfig import WebConfig

log = structlog.get_logger(__name__)
FORGET_CHECK_SECONDS = 60.0
NOT_A_QUEUE = {UNKNOWN, "other"}
SWITCH_INTERVAL_SECONDS = 0.001
STOP_SECONDS = 3.0  # SIGTERM must end the process within 5 s, whatever a thread waits on


def celery_app(config: Config) -> Celery:
    """A bare Celery app for the broker: JSON only, for inspect and the generic receiver.

    It gets the broker's transport options (Sentinel's master_name, global_keyprefix...)
    and TLS options (broker_use_ssl) exactly as given, so it connects as the workers do.
    """
    app = Celery("celery-observatory-exporter", broker=config.broker_url, set_as_current=False)
    transport_options = dict(config.broker_transport_options)
    if config.global_keyprefix:
        transport_options["global_keyprefix"] = config.global_keyprefix
    app.conf.update(
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_serializer="json",
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        **broker.celery_broker_options(transport_options, config.broker_ssl_options),
    )
    return app


class Exporter:
    """Owns every thread of the exporter; ``start()`` and ``stop()`` are idempotent enough."""

    def __init__(self, config: Config, web: WebConfig | None = None) -> None:
        self.config = config
        self.web = web or WebConfig()
        self.state = State(config.state)
        self.app = celery_app(config)
        self.static_queues = set(config.queues)
        self.started_at = time.time()
        self._next_forget = 0.0
        self.source = self._make_source()
        poller = self._make_poller()
        self.poller = PollerThread(
            poller, config.broker_poll_interval, self.watched_queues, on_fatal=self.fatal
        )
        self.inspector = (
            InspectorThread(
                self.app, config.inspect_interval, config.inspect_timeout, self._learn_queues
            )
            if config.inspect_interval > 0
            else None
        )
        self.renderer = Renderer(config.metric_prefix, config.static_labels, config.created_series)
        self._render_lock = threading.Lock()
        # Process, platform and GC metrics, rendered by prometheus_client after ours.
        self.process_registry = CollectorRegistry(auto_describe=False)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.process_registry)
        self.http: HttpServer | None = None
        self._events_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def _make_source(self) -> RedisEventSource | ReceiverEventSource:
        config = self.config
        if config.uses_redis_fast_path:
            return RedisEventSource(
                broker.broker_client(config, timeout=5.0),
                self.state,
                broker.event_pattern(config.redis_db, config.global_keyprefix),
                config.max_backlog_bytes,
                housekeeping=self._housekeeping,
                retry_interval=config.retry_interval,
            )
        return ReceiverEventSource(
            self.app, self.state, self._housekeeping, retry_interval=config.retry_interval
        )

    def _make_poller(self) -> RedisBrokerPoller | AmqpBrokerPoller:
        config = self.config
        timeout = max(1.0, min(config.broker_poll_interval, 5.0))
        if config.scheme in broker.FAST_PATH_SCHEMES:
            return RedisBrokerPoller(
                broker.broker_client(config, timeout=timeout, retries=1),
                self.state.index.sent_time,
                config.global_keyprefix,
                config.state.max_queues,
                broker_url=config.broker_url,
            )
        return AmqpBrokerPoller(
            Connection(config.broker_url, connect_timeout=timeout), config.state.max_queues
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        # The event processor holds the GIL almost all the time under load; with the default
        # 5 ms switch interval every blocking call of a scrape (accept, read, write) waits up
        # to 5 ms to get it back. 1 ms keeps scrapes fast at a small cost to ingest
        # (bench/RESULTS.md, "Scrape latency").
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        endpoints = Endpoints(
            metrics=self.render,
            content_types=CONTENT_TYPES,
            status=self.status,
            ready=self.ready,
            index_html=resources.files("exporter").joinpath("static/index.html").read_bytes(),
        )
        self.http = HttpServer(
            ExporterApp(endpoints, self.web, RequestPriority(self.source.yield_to_requests)),
            self.config.listen_address,
            self.config.http_limits,
        )
        self._rebuild_index()
        self.source.start()
        self.poller.start()
        if self.inspector is not None:
            self.inspector.start()
        if self.config.enable_events_interval > 0:
            self._events_thread = threading.Thread(
                target=self._enable_events_forever, name="enable-events", daemon=True
            )
            self._events_thread.start()
        self.http.start()
        log.info(
            "exporter started",
            version=__version__,
            broker=mask_url(self.config.broker_url),
            listen=self.config.listen_address,
            port=self.http.port,
            event_source="redis" if isinstance(self.source, RedisEventSource) else "receiver",
            tls=self.web.ssl_context is not None,
            basic_auth=self.web.basic_auth is not None,
        )

    def fatal(self, message: str) -> None:
        """A broker the exporter can never use (a Redis Cluster): one error line, exit 1.

        Called from a background thread once the broker answers, which may be long after
        start-up (--wait-for-broker); retrying could never succeed, and a crash-looping pod
        with this line in its log says more than a green pod with broker_up 0.
        """
        log.error(message)
        sys.stderr.flush()
        os._exit(1)

    def reload_web_config(self) -> None:
        """SIGHUP: re-read --web.config-file; new connections use it (one log line)."""
        self.web = reload_web_config(self.config.web_config_file, self.web)
        if self.http is not None:
            self.http.app.web = self.web

    def stop(self) -> None:
        """Stop every part at once and wait for them together, at most ``STOP_SECONDS``: an
        inspect, a poll or a reconnect waiting on the broker must not delay the exit, and
        an event backlog is abandoned, not drained."""
        self._stopping.set()
        parts = [self.http, self.inspector, self.poller, self.source]
        stoppers = [
            threading.Thread(target=part.stop, name="stop", daemon=True)
            for part in parts
            if part is not None
        ]
        deadline = time.monotonic() + STOP_SECONDS
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(timeout=max(0.0, deadline - time.monotonic()))
        log.info("exporter stopped")

    # ------------------------------------------------------------------ threads' helpers

    def watched_queues(self) -> set[str]:
        """Flags, queues seen in events and queues the inspect reports (bindings: poller)."""
        queues = set(self.static_queues)
        queues.update(self.state.queues.known.values())
        if self.inspector is not None:
            queues.update(self.inspector.view.workers)
        return queues - NOT_A_QUEUE

    def _rebuild_index(self) -> None:
        """A restarted exporter learns the tasks already running from the broker's unacked
        deliveries, so their started/succeeded events keep their name and queue."""
        poller = self.poller.poller
        if not isinstance(poller, RedisBrokerPoller):
            return
        try:
            tasks = poller.inflight_tasks(self.config.state.max_tracked_tasks)
        except Exception as exc:  # broker down, or an ACL user without HSCAN on unacked
            if broker.is_cluster_error(exc):
                return  # the poller refuses a Redis Cluster with one clear line
            log.warning(
                "could not read in-flight tasks; their labels may be 'unknown'", error=str(exc)
            )
            return
        if tasks:
            log.info(
                "task index rebuilt from unacked deliveries", tasks=self.state.seed_inflight(tasks)
            )

    def _learn_queues(self, view: InspectView) -> None:
        """Runs on the inspector thread: which queue each single-queue worker serves, and
        each worker's pool (both dicts are replaced whole, never mutated)."""
        self.state.worker_queue = {
            worker: queues[0] for worker, queues in view.queues_of.items() if len(queues) == 1
        }
        self.state.pools = merge_pools(self.state.pools, view.pools)

    def _housekeeping(self) -> None:
        """Runs on the event thread (the state's owner) about once a second."""
        state = self.state
        state.flush_pending()
        now = time.time()
        state.check_workers(now)
        if now >= self._next_forget:
            self._next_forget = now + FORGET_CHECK_SECONDS
            for host in state.forget_workers(now):
                log.info("forgot worker", hostname=host)
            for producer in state.forget_producers(now):
                log.info("forgot producer", hostname=producer)

    def _enable_events_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                self.app.control.enable_events()
            except Exception as exc:  # broker down or no rights: retried next interval
                log.warning("could not broadcast enable_events", error=str(exc))
            self._stopping.wait(self.config.enable_events_interval)

    # ------------------------------------------------------------------ scrape path

    def view(self) -> ScrapeView:
        source = self.source
        return gather(
            self.state,
            self.poller.view,
            self.inspector.view if self.inspector is not None else InspectView(),
            SourceStatus(
                source.subscribed, source.backlog_bytes, source.dropped, dict(source.reconnects)
            ),
            self.config.visibility_timeout,
            __version__,
            celery.__version__,
            self.started_at,
            http_rejected=self.http.rejected if self.http is not None else None,
            admission_limits=self.config.admission_limits,
        )

    def render(self, fmt: str) -> bytes:
        """The exposition in ``fmt`` (``"openmetrics"`` or ``"text"``, from Accept)."""
        # One render at a time: the label cache is shared, and concurrent scrapes of a
        # large exposition would only compete for the GIL.
        with self._render_lock:
            body = exposition(self.renderer, families(self.view()), fmt, self._process_metrics)
        return body.encode()

    def _process_metrics(self, fmt: str) -> str:
        if fmt == OPENMETRICS:
            text = openmetrics.exposition.generate_latest(self.process_registry).decode()
            return text.removesuffix("# EOF\n")
        return generate_latest(self.process_registry).decode()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        broker = self.poller.view
        detail = {
            "broker_reachable": broker.up,
            "events_subscribed": self.source.subscribed,
        }
        return broker.up and self.source.subscribed, detail

    def status(self) -> dict[str, Any]:
        """The status page's data, read off the same families /metrics renders."""
        view = self.view()
        return status_document(families(view), view.state.now, self.started_at)
