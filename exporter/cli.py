"""``celery-observatory-exporter``: the command line. Every flag also reads an env var."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from typing import Any, NoReturn

import click
import structlog

from exporter import __version__
from exporter.broker import scheme_of, split_urls
from exporter.config import Config, ConfigError
from exporter.httpserver import Limits
from exporter.logs import configure_logging, mask_secrets
from exporter.state import Options
from exporter.webconfig import WebConfigError, load_web_config

log = structlog.get_logger("exporter")
PREFIX = "CELERY_EXPORTER_"
PEER_PREFIX = "CE_"  # danihodovic/celery-exporter reads every flag from CE_<FLAG>
JSON_NAMES = {"json", "application/json"}
LOG_LEVEL_ALIASES = {"TRACE": "DEBUG", "SUCCESS": "INFO", "CRITICAL": "ERROR"}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _env(flag: str, prefix: str = PREFIX) -> str:
    """``--a.b-c`` -> ``CELERY_EXPORTER_A_B_C`` (for ``--x/--no-x`` switches, from ``--x``)."""
    name = flag.split("/")[0].lstrip("-")
    return prefix + name.replace(".", "_").replace("-", "_").upper()


def option(flag: str, *args: Any, peer: bool = False, **kwargs: Any) -> Any:
    """A click option whose env var is derived from the flag (``--a.b-c`` -> ``..._A_B_C``).

    ``peer``: the flag is also danihodovic/celery-exporter's, so its ``CE_`` env var works too
    (that exporter reads every flag from ``CE_<FLAG>``): a user swaps the image, keeps the env.
    """
    long_flag = next(d for d in (flag, *args) if d.startswith("--"))
    if peer and "envvar" not in kwargs:
        kwargs["envvar"] = [_env(long_flag), _env(long_flag, PEER_PREFIX)]
    kwargs.setdefault("envvar", _env(long_flag))
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
    # The +Inf bucket is always served; the peer's lists end with it ("...,7.5,10.0,inf").
    bounds = tuple(b for b in bounds if b != float("inf"))
    if not bounds or any(not 0 < b < float("inf") for b in bounds):
        raise click.BadParameter("at least one positive, finite bucket bound")
    return bounds


def _queue_list(_: Any, __: click.Parameter, value: str | None) -> tuple[str, ...]:
    return tuple(q.strip() for q in (value or "").split(",") if q.strip())


def option_value(value: str) -> Any:
    """A ``key=value`` option's value as the peer reads it: digits -> int, JSON -> its value
    (``sentinel_kwargs={"password": "x"}``), anything else the string itself."""
    if value.isdigit():
        return int(value)
    try:
        return json.loads(value)
    except ValueError:
        return value


def _key_values(_: Any, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """Repeatable ``key=value`` options as a dict (``--broker-transport-option`` and friends)."""
    result: dict[str, Any] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected key=value, got {item!r}")
        result[key.strip()] = option_value(value.strip())
    return result


def _created_disabled_by_client_env() -> bool:
    """prometheus_client's own switch, honoured as it reads it."""
    return os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "").lower() == "true"


def _static_labels(ctx: Any, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    labels = {key: str(value) for key, value in _key_values(ctx, param, values).items()}
    for name in labels:
        if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise click.BadParameter(f"{name!r} is not a valid Prometheus label name")
    return labels


def _admission_limits(ctx: Any, param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    limits = _key_values(ctx, param, values)
    for queue, limit in limits.items():
        if type(limit) is not int or limit < 0:
            raise click.BadParameter(f"{queue}={limit!r}: the limit is a whole number >= 0")
    return limits


def _accept_content(_: Any, __: click.Parameter, value: str | None) -> None:
    """The peer's --accept-content, held to JSON: anything else is refused by name."""
    if value is None:
        return
    wanted = {v.strip().lower() for v in value.split(",") if v.strip()}
    other = sorted(wanted - JSON_NAMES)
    if other:
        raise click.BadParameter(
            f"only json is accepted, not {', '.join(other)}: the exporter never deserializes "
            "pickle, yaml or msgpack (events are JSON; a pickle body could run code)"
        )


def _log_level(_: Any, __: click.Parameter, value: str) -> str:
    """Our levels plus loguru's, which the peer accepts (TRACE, SUCCESS, CRITICAL)."""
    return LOG_LEVEL_ALIASES.get(value.upper(), value.upper())


HELP = """Export Celery task, queue, worker and broker metrics to Prometheus.

\b
Subscribes to the Celery event stream (workers need -E or worker_send_task_events,
and task_send_sent_event for queue labels and queue-wait times), polls the broker's
queues, and serves /metrics on --web.listen-address. Every flag can also be set with the
environment variable shown next to it; the flags of danihodovic/celery-exporter also read
its CE_* variables, with the same meaning.

\b
Examples:
  celery-observatory-exporter --broker-url redis://:secret@redis:6379/0
  celery-observatory-exporter --broker-url amqp://guest:guest@rabbit:5672// --queues cpu,io
  celery-observatory-exporter --broker-url 'sentinel://s1:26379;sentinel://s2:26379' \\
      --broker-transport-option master_name=mymaster
"""

CONFIG = Config()
OPTIONS = Options()
# The peer's --redbeat-* flags only set RedBeat keys in its Celery app's configuration; it
# serves no metric from them. Accepted (and their CE_* env vars) so a Helm values file that
# sets them still starts; ignored with a warning. Hidden: they do nothing here.
REDBEAT_FLAGS = ("redbeat_redis_url", "redbeat_redis_use_ssl", "redbeat_key_prefix",
                 "redbeat_sentinel", "redbeat_redis_option")  # fmt: skip
REDBEAT: dict[str, Any] = {"peer": True, "hidden": True, "show_default": False}


@click.command(help=HELP, context_settings={"max_content_width": 100})
@option(
    "--broker-url",
    default=None,
    show_default=CONFIG.broker_url,
    envvar=[_env("--broker-url"), _env("--broker-url", PEER_PREFIX), "CELERY_BROKER_URL"],
    help="Celery broker URL: redis://, rediss://, sentinel:// (Redis fast path) or amqp:// "
    "(generic).",
)
@option(
    "--broker-transport-option",
    "broker_transport_options",
    multiple=True,
    callback=_key_values,
    peer=True,
    show_default=False,
    help="kombu broker transport option key=value, repeatable: master_name= and "
    "sentinel_kwargs= (JSON) for Sentinel, global_keyprefix=, visibility_timeout=.",
)
@option(
    "--broker-ssl-option",
    "broker_ssl_options",
    multiple=True,
    callback=_key_values,
    peer=True,
    show_default=False,
    help="Broker TLS option key=value, repeatable (Celery's broker_use_ssl), e.g. "
    "ssl_ca_certs=/ca.pem, ssl_cert_reqs=required.",
)
@option(
    "--accept-content",
    default=None,
    callback=_accept_content,
    expose_value=False,
    peer=True,
    show_default="json",
    help="Content types to accept. Only json is allowed; anything else (pickle) is refused.",
)
@option(
    "--web.listen-address",
    "listen_address",
    default=CONFIG.listen_address,
    help="Address to serve on, [host]:port.",
)
@option(
    "--host",
    default=None,
    show_default=False,
    peer=True,
    help="Host to listen on (peer exporter compatibility; overrides the listen host).",
)
@option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    show_default=False,
    peer=True,
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
    "--web.max-connections",
    "max_connections",
    type=click.IntRange(min=1),
    default=CONFIG.http_limits.max_connections,
    help="Open connections served at once (kept below the file-descriptor limit); past it "
    "new ones are closed, counted and logged.",
)
@option(
    "--web.read-header-timeout",
    "read_header_timeout",
    type=click.FloatRange(min=0.1),
    default=CONFIG.http_limits.header_timeout,
    help="Seconds a client has to send its request head (TLS handshake included).",
)
@option(
    "-Q",
    "--queues",
    default="",
    callback=_queue_list,
    show_default=False,
    peer=True,
    help="Comma-separated queues to always report (0 when empty), besides discovered ones.",
)
@option(
    "--admission-limit",
    "admission_limits",
    multiple=True,
    callback=_admission_limits,
    show_default=False,
    help="queue=N, repeatable: the backlog past which your application refuses new work on "
    "that queue (e.g. the workload API's 429s); exported and shown on the status page.",
)
@option(
    "--default-queue-name",
    default=OPTIONS.default_queue_name,
    peer=True,
    help="queue_name label of tasks whose queue is unknown (their task-sent was not seen).",
)
@option(
    "--metric-prefix",
    default=CONFIG.metric_prefix,
    peer=True,
    help="Prefix of every metric name, replacing 'celery_' (e.g. 'myapp_celery_').",
)
@option(
    "--created-series/--no-created-series",
    default=CONFIG.created_series,
    help="Serve the _created sample of every counter and histogram series, as "
    "prometheus_client (and so the peer exporter) does. Prometheus stores each as a series of "
    "its own; --no-created-series saves them (also PROMETHEUS_DISABLE_CREATED_SERIES=true).",
)
@option(
    "--static-label",
    "static_labels",
    multiple=True,
    callback=_static_labels,
    peer=True,
    show_default=False,
    help="Label name=value added to every metric, repeatable (e.g. one exporter per app).",
)
@option("--redbeat-redis-url", default=None, **REDBEAT)
@option("--redbeat-redis-use-ssl", default=None, **REDBEAT)
@option("--redbeat-key-prefix", default=None, **REDBEAT)
@option("--redbeat-sentinel", multiple=True, **REDBEAT)
@option("--redbeat-redis-option", multiple=True, **REDBEAT)
@option(
    "--broker-poll-interval",
    type=click.FloatRange(min=0.1),
    default=CONFIG.broker_poll_interval,
    help="Seconds between broker polls (queue lengths, ages, unacked).",
)
@option(
    "--retry-interval",
    type=click.FloatRange(min=0),
    default=CONFIG.retry_interval,
    peer=True,
    help="Longest wait, in seconds, between broker reconnect attempts; 0: capped exponential "
    "backoff up to 5 s. The exporter never exits on a broker error (the peer does when 0).",
)
@option(
    "--worker-timeout",
    type=click.FloatRange(min=0),
    default=None,
    peer=True,
    show_default="3 heartbeat intervals",
    help="Seconds without a heartbeat before a worker counts as down (celery_worker_up 0, "
    "state lost); 0: never. A solo-pool worker sends nothing, not even its task events, "
    "while a task runs: give it a timeout longer than its longest task. Where the exporter "
    "saw the task start (threads, gevent, eventlet pools) it shows the worker 'busy'.",
)
@option(
    "--worker-forget-after",
    type=click.FloatRange(min=0),
    default=OPTIONS.worker_forget_after,
    help="Seconds after its last heartbeat before a down or departed worker's series are "
    "removed; 0: never. Autoscaled pods with random names: about 1 h.",
)
@option(
    "--purge-offline-worker-metrics",
    type=click.FloatRange(min=0),
    default=None,
    peer=True,
    show_default=False,
    help="The peer's name for --worker-forget-after (same meaning; wins when both are set).",
)
@option(
    "--max-producers",
    type=click.IntRange(min=1),
    default=OPTIONS.max_producers,
    help="Cap on distinct producer hostnames (task-sent); more are labelled 'other'.",
)
@option(
    "--producer-forget-after",
    type=click.FloatRange(min=1),
    default=OPTIONS.producer_forget_after,
    help="Seconds after its last task-sent before a producer's series are removed.",
)
@option(
    "--generic-hostname-task-sent-metric/--no-generic-hostname-task-sent-metric",
    default=OPTIONS.generic_hostname_task_sent,
    peer=True,
    help="Label celery_task_sent_total with hostname 'generic' instead of the producer's.",
)
@option(
    "--generic-hostname-worker-task-metric/--no-generic-hostname-worker-task-metric",
    default=OPTIONS.generic_hostname_worker_task,
    peer=True,
    help="Label the worker-side task metrics with hostname 'generic' instead of the worker's.",
)
@option(
    "--inspect-interval",
    type=click.FloatRange(min=0),
    default=CONFIG.inspect_interval,
    help="Seconds between background inspect broadcasts (consumers, pool sizes); 0 disables.",
)
@option(
    "--inspect-timeout",
    type=click.FloatRange(min=0.1),
    default=CONFIG.inspect_timeout,
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
    default=None,
    show_default=f"{CONFIG.visibility_timeout:g}",
    help="The workers' broker visibility_timeout, exported for the unacked-age alert "
    "(default: the visibility_timeout transport option, else kombu's 3600).",
)
@option(
    "--global-keyprefix",
    default=None,
    show_default=False,
    help="kombu's global_keyprefix broker transport option, if the app sets one.",
)
@option(
    "--event-source",
    type=click.Choice(["auto", "redis", "receiver"]),
    default=CONFIG.event_source,
    help="redis: fast PSUBSCRIBE path; receiver: Celery's EventReceiver (any broker).",
)
@option(
    "--max-tracked-tasks",
    type=click.IntRange(min=1),
    default=OPTIONS.max_tracked_tasks,
    help="Cap on the task index (tasks in flight); oldest evicted first.",
)
@option(
    "--max-task-names",
    type=click.IntRange(min=1),
    default=OPTIONS.max_task_names,
    help="Cap on distinct task names; more are labelled 'other'.",
)
@option(
    "--max-hostnames",
    type=click.IntRange(min=1),
    default=OPTIONS.max_hostnames,
    help="Cap on distinct worker hostnames; more are labelled 'other' (departed workers "
    "make room first).",
)
@option(
    "--max-queues",
    type=click.IntRange(min=1),
    default=OPTIONS.max_queues,
    help="Cap on distinct queues; more are labelled 'other'.",
)
@option(
    "--max-exception-types",
    type=click.IntRange(min=1),
    default=OPTIONS.max_exception_types,
    help="Cap on distinct exception classes; more are labelled 'other'.",
)
@option(
    "--max-series",
    type=click.IntRange(min=1000),
    default=OPTIONS.max_series,
    help="Budget of task series in total; past it new label sets are labelled 'other' and "
    'counted (celery_exporter_label_overflow_total{label="series"}).',
)
@option(
    "--max-backlog-bytes",
    type=click.IntRange(min=1024 * 1024),
    default=CONFIG.max_backlog_bytes,
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
    "--buckets",
    default=None,
    callback=_floats,
    peer=True,
    show_default=False,
    help="The peer's name for --runtime-buckets.",
)
@option(
    "--queue-wait-buckets",
    default=None,
    callback=_floats,
    peer=True,
    show_default="0.05 ... 1800",
    help="Comma-separated bucket bounds (seconds) for celery_task_queue_wait_time.",
)
@option(
    "--wait-for-broker/--no-wait-for-broker",
    default=CONFIG.wait_for_broker,
    help="Start and keep retrying while the broker is unreachable; with --no-wait-for-broker "
    "exit 1 at once instead.",
)
@option(
    "--log-level",
    type=click.Choice(
        ["DEBUG", "INFO", "WARNING", "ERROR", *LOG_LEVEL_ALIASES], case_sensitive=False
    ),
    default="INFO",
    callback=_log_level,
    peer=True,
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
    ignored = [f"--{name.replace('_', '-')}" for name in REDBEAT_FLAGS if flags[name]]
    if ignored:  # names only: a RedBeat URL may hold a password
        log.warning("peer exporter flags accepted and ignored (no metric uses them)",
                    flags=ignored)  # fmt: skip
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


def _broker_url(flags: dict[str, Any]) -> str:
    """With --broker-ssl-option a redis:// broker is spoken to over TLS, as kombu does once
    Celery's broker_use_ssl is set (the peer's meaning, and our own Celery app's)."""
    url = flags["broker_url"] or CONFIG.broker_url
    if not flags["broker_ssl_options"] or scheme_of(url) != "redis":
        return url
    return ";".join("rediss" + u[5:] if scheme_of(u) == "redis" else u for u in split_urls(url))


def build_config(flags: dict[str, Any]) -> Config:
    transport = dict(flags["broker_transport_options"])
    if flags["global_keyprefix"] is not None:
        transport["global_keyprefix"] = flags["global_keyprefix"]
    visibility = flags["visibility_timeout"] or transport.get("visibility_timeout")
    forget_after = flags["purge_offline_worker_metrics"]
    options = Options(
        max_tracked_tasks=flags["max_tracked_tasks"],
        max_task_names=flags["max_task_names"],
        max_hostnames=flags["max_hostnames"],
        max_queues=flags["max_queues"],
        max_exception_types=flags["max_exception_types"],
        max_series=flags["max_series"],
        runtime_buckets=flags["runtime_buckets"] or flags["buckets"] or OPTIONS.runtime_buckets,
        queue_wait_buckets=flags["queue_wait_buckets"] or OPTIONS.queue_wait_buckets,
        worker_timeout=flags["worker_timeout"],
        worker_forget_after=flags["worker_forget_after"] if forget_after is None else forget_after,
        max_producers=flags["max_producers"],
        producer_forget_after=flags["producer_forget_after"],
        default_queue_name=flags["default_queue_name"],
        generic_hostname_task_sent=flags["generic_hostname_task_sent_metric"],
        generic_hostname_worker_task=flags["generic_hostname_worker_task_metric"],
    )
    return Config(
        broker_url=_broker_url(flags),
        listen_address=_listen_address(flags),
        web_config_file=flags["web_config_file"],
        http_limits=Limits(
            max_connections=flags["max_connections"], header_timeout=flags["read_header_timeout"]
        ),
        queues=flags["queues"],
        admission_limits=flags["admission_limits"],
        broker_poll_interval=flags["broker_poll_interval"],
        retry_interval=flags["retry_interval"],
        inspect_interval=flags["inspect_interval"],
        inspect_timeout=flags["inspect_timeout"],
        enable_events_interval=flags["enable_events_interval"] if flags["enable_events"] else 0.0,
        visibility_timeout=float(visibility or CONFIG.visibility_timeout),
        global_keyprefix=str(transport.get("global_keyprefix", "")),
        broker_transport_options=transport,
        broker_ssl_options=flags["broker_ssl_options"],
        metric_prefix=flags["metric_prefix"],
        static_labels=flags["static_labels"],
        created_series=flags["created_series"] and not _created_disabled_by_client_env(),
        event_source=flags["event_source"],
        max_backlog_bytes=flags["max_backlog_bytes"],
        wait_for_broker=flags["wait_for_broker"],
        state=options,
    )


def check_broker(config: Config) -> None:
    """With --no-wait-for-broker: one attempt, exit 1 with one line saying what is wrong."""
    from exporter.broker import BrokerUnusable, check

    try:
        check(config)
    except BrokerUnusable as exc:
        fail(f"error: {exc}")


def run(config: Config, web: Any) -> None:
    from exporter.app import Exporter  # imported late: --help must not pay for Celery

    exporter = Exporter(config, web)
    signal.signal(signal.SIGHUP, lambda *_: exporter.reload_web_config())
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
