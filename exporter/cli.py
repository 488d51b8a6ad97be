"""``celery-observatory-exporter``: the command line. Every flag also reads an env var."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, NoReturn

import click
import redis
import structlog
from kombu import Connection

from exporter import __version__
from exporter.config import Config, ConfigError
from exporter.logs import configure_logging, mask_secrets, mask_url
from exporter.state import Options
from exporter.webconfig import WebConfigError, load_web_config

log = structlog.get_logger("exporter")
PREFIX = "CELERY_EXPORTER_"
DEFAULT_BROKER = "redis://localhost:6379/0"


def _env(flag: str) -> str:
    """``--a.b-c`` -> ``CELERY_EXPORTER_A_B_C`` (for ``--x/--no-x`` switches, from ``--x``)."""
    name = flag.split("/")[0].lstrip("-")
    return PREFIX + name.replace(".", "_").replace("-", "_").upper()


def option(flag: str, *args: Any, **kwargs: Any) -> Any:
    """A click option whose env var is derived from the flag (``--a.b-c`` -> ``..._A_B_C``)."""
    kwargs.setdefault("envvar", _env(flag))
    kwargs.setdefault("show_envvar", True)
    kwargs.setdefault("show_default", True)
    return click.option(flag, *args, **kwargs)


def _floats(_: Any, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        bounds = tuple(sorted(float(v) for v in value.split(",") if v.strip()))
    except ValueError:
        raise click.BadParameter("comma-separated numbers, e.g. 0.1,0.5,1,5") from None
    if not bounds or any(b <= 0 for b in bounds):
        raise click.BadParameter("at least one positive bucket bound")
    return bounds


def _queue_list(_: Any, __: click.Parameter, value: str | None) -> tuple[str, ...]:
    return tuple(q.strip() for q in (value or "").split(",") if q.strip())


HELP = """Export Celery task, queue, worker and broker metrics to Prometheus.

\b
Subscribes to the Celery event stream (workers need -E or worker_send_task_events,
and task_send_sent_event for queue labels and queue-wait times), polls the broker's
queues, and serves /metrics on --web.listen-address. Every flag can also be set with the
environment variable shown next to it.

\b
Examples:
  celery-observatory-exporter --broker-url redis://:secret@redis:6379/0
  celery-observatory-exporter --broker-url amqp://guest:guest@rabbit:5672// --queues cpu,io
"""


@click.command(help=HELP, context_settings={"max_content_width": 100})
@option(
    "--broker-url",
    default=None,
    show_default=DEFAULT_BROKER,
    envvar=[_env("--broker-url"), "CELERY_BROKER_URL"],
    help="Celery broker URL: redis://, rediss:// (Redis fast path) or amqp:// (generic).",
)
@option(
    "--web.listen-address",
    "listen_address",
    default=":9808",
    help="Address to serve on, [host]:port.",
)
@option(
    "--host",
    default=None,
    show_default=False,
    help="Host to listen on (peer exporter compatibility; overrides the listen host).",
)
@option(
    "--port",
    type=int,
    default=None,
    show_default=False,
    help="Port to listen on (peer exporter compatibility; overrides the listen port).",
)
@option(
    "--web.config-file",
    "web_config_file",
    default=None,
    show_default=False,
    type=click.Path(dir_okay=False),
    help="exporter-toolkit web config (YAML) for TLS and basic auth.",
)
@option(
    "--queues",
    default="",
    callback=_queue_list,
    show_default=False,
    help="Comma-separated queues to always report (0 when empty), besides discovered ones.",
)
@option(
    "--broker-poll-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    help="Seconds between broker polls (queue lengths, ages, unacked).",
)
@option(
    "--worker-timeout",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default="3 heartbeat intervals",
    help="Seconds without a heartbeat before celery_worker_up drops to 0.",
)
@option(
    "--worker-forget-after",
    type=click.FloatRange(min=1),
    default=86400.0,
    help="Seconds after its last heartbeat before a dead worker's series are removed.",
)
@option(
    "--inspect-interval",
    type=click.FloatRange(min=0),
    default=30.0,
    help="Seconds between background inspect broadcasts (consumer counts); 0 disables.",
)
@option(
    "--inspect-timeout",
    type=click.FloatRange(min=0.1),
    default=2.0,
    help="Seconds to wait for inspect replies.",
)
@option(
    "--enable-events/--no-enable-events",
    default=False,
    help="Broadcast enable_events at start and every --enable-events-interval, for workers "
    "started without -E.",
)
@option(
    "--enable-events-interval",
    type=click.FloatRange(min=1),
    default=300.0,
    help="Seconds between enable_events broadcasts when --enable-events is on.",
)
@option(
    "--visibility-timeout",
    type=click.FloatRange(min=1),
    default=3600.0,
    help="The workers' broker visibility_timeout, exported for the unacked-age alert.",
)
@option(
    "--global-keyprefix",
    default="",
    help="kombu's global_keyprefix broker transport option, if the app sets one.",
)
@option(
    "--event-source",
    type=click.Choice(["auto", "redis", "receiver"]),
    default="auto",
    help="redis: fast PSUBSCRIBE path; receiver: Celery's EventReceiver (any broker).",
)
@option(
    "--max-tracked-tasks",
    type=click.IntRange(min=1),
    default=100_000,
    help="Cap on the task index (tasks in flight); oldest evicted first.",
)
@option(
    "--max-task-names",
    type=click.IntRange(min=1),
    default=1000,
    help="Cap on distinct task names; more are labelled 'other'.",
)
@option(
    "--max-hostnames",
    type=click.IntRange(min=1),
    default=1000,
    help="Cap on distinct hostnames; more are labelled 'other'.",
)
@option(
    "--max-queues",
    type=click.IntRange(min=1),
    default=500,
    help="Cap on distinct queues; more are labelled 'other'.",
)
@option(
    "--max-exception-types",
    type=click.IntRange(min=1),
    default=500,
    help="Cap on distinct exception classes; more are labelled 'other'.",
)
@option(
    "--max-backlog-bytes",
    type=click.IntRange(min=1024 * 1024),
    default=512 * 1024 * 1024,
    help="Cap on received-but-unprocessed event bytes; past it messages are dropped and counted.",
)
@option(
    "--runtime-buckets",
    default=None,
    callback=_floats,
    show_default="prometheus_client's",
    help="Comma-separated bucket bounds (seconds) for celery_task_runtime.",
)
@option(
    "--queue-wait-buckets",
    default=None,
    callback=_floats,
    show_default="0.05 ... 1800",
    help="Comma-separated bucket bounds (seconds) for celery_task_queue_wait_time.",
)
@option(
    "--wait-for-broker/--no-wait-for-broker",
    default=True,
    help="Start and keep retrying while the broker is unreachable; with --no-wait-for-broker "
    "exit 1 at once instead.",
)
@option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    help="Log level.",
)
@option(
    "--log-format",
    type=click.Choice(["json", "console"]),
    default="json",
    help="json: one JSON object per line; console: for humans.",
)
@click.version_option(__version__, prog_name="celery-observatory-exporter")
def command(**flags: Any) -> None:
    configure_logging(flags["log_level"], flags["log_format"])
    try:
        config = build_config(flags).validate()
        web = load_web_config(config.web_config_file)
    except (ConfigError, WebConfigError, ValueError) as exc:
        fail(f"error: {exc}", code=2)
    if not config.wait_for_broker:
        check_broker(config)
    run(config, web)


def flags_table() -> str:
    """Every flag, its env var, default and help, as a Markdown table (README, generated)."""
    rows = ["| flag | env var | default | what it does |", "| --- | --- | --- | --- |"]
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or not param.envvar:
            continue
        flags = " / ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
        envvar = (
            param.envvar if isinstance(param.envvar, str) else " then ".join(param.envvar or [])
        )
        default = param.show_default if isinstance(param.show_default, str) else param.default
        if param.is_flag and not param.secondary_opts:
            default = "off"
        default_text = "—" if default in (None, "", ()) else f"`{default}`"
        help_text = (param.help or "").replace("|", "\\|")
        rows.append(f"| {flags} | `{envvar}` | {default_text} | {help_text} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Entry point: a wrong flag is one line on stderr and exit code 2, not a usage page."""
    try:
        code = command.main(args=argv, prog_name="celery-observatory-exporter",
                            standalone_mode=False)  # fmt: skip
    except click.UsageError as exc:
        fail(f"error: {exc.format_message()} (see --help)", code=2)
    except click.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(mask_secrets(message), err=True)
    sys.exit(code)


def _listen_address(flags: dict[str, Any]) -> str:
    address = flags["listen_address"]
    if flags["host"] is None and flags["port"] is None:
        return address
    host, _, port = address.rpartition(":")
    host = flags["host"] if flags["host"] is not None else host
    port = str(flags["port"]) if flags["port"] is not None else port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_config(flags: dict[str, Any]) -> Config:
    defaults = Options()
    options = Options(
        max_tracked_tasks=flags["max_tracked_tasks"],
        max_task_names=flags["max_task_names"],
        max_hostnames=flags["max_hostnames"],
        max_queues=flags["max_queues"],
        max_exception_types=flags["max_exception_types"],
        runtime_buckets=flags["runtime_buckets"] or defaults.runtime_buckets,
        queue_wait_buckets=flags["queue_wait_buckets"] or defaults.queue_wait_buckets,
        worker_timeout=flags["worker_timeout"],
        worker_forget_after=flags["worker_forget_after"],
    )
    return Config(
        broker_url=flags["broker_url"] or DEFAULT_BROKER,
        listen_address=_listen_address(flags),
        web_config_file=flags["web_config_file"],
        queues=flags["queues"],
        broker_poll_interval=flags["broker_poll_interval"],
        inspect_interval=flags["inspect_interval"],
        inspect_timeout=flags["inspect_timeout"],
        enable_events_interval=flags["enable_events_interval"] if flags["enable_events"] else 0.0,
        visibility_timeout=flags["visibility_timeout"],
        global_keyprefix=flags["global_keyprefix"],
        event_source=flags["event_source"],
        max_backlog_bytes=flags["max_backlog_bytes"],
        wait_for_broker=flags["wait_for_broker"],
        state=options,
    )


def check_broker(config: Config) -> None:
    """With --no-wait-for-broker: one connection attempt, exit 1 with one line if it fails."""
    try:
        if config.scheme in ("redis", "rediss"):
            client = redis.Redis.from_url(
                config.broker_url, socket_timeout=5, socket_connect_timeout=5
            )
            client.ping()
            client.close()
        else:
            with Connection(config.broker_url, connect_timeout=5) as conn:
                conn.ensure_connection(max_retries=1)
    except Exception as exc:
        fail(f"error: cannot reach broker {mask_url(config.broker_url)}: {exc}")


def run(config: Config, web: Any) -> None:
    from exporter.app import Exporter  # imported late: --help must not pay for Celery

    exporter = Exporter(config, web)
    try:
        exporter.start()
    except OSError as exc:
        fail(f"error: cannot listen on {config.listen_address}: {exc.strerror or exc}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    exporter.stop()
    sys.stderr.flush()
    os._exit(0)  # daemon threads may be blocked in broker I/O; nothing is left to flush
