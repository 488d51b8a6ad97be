"""The Redis broker, as Celery sees it: URLs, clients, and what a broker error means.

One place builds every Redis client the exporter uses (the event source, the poller and the
start-up check), from the broker URL plus Celery's ``broker_transport_options`` and
``broker_use_ssl``, the way kombu's Redis transport does:

* ``redis://`` and ``rediss://`` (TLS; ``--broker-ssl-option`` adds the CA, client
  certificate and verification mode, as ``broker_use_ssl`` does for Celery);
* ``sentinel://h1:26379;sentinel://h2:26379`` with ``master_name`` (and optionally
  ``sentinel_kwargs``, ``min_other_sentinels``): like kombu's ``SentinelChannel``, the URL's
  user, password and database are the *master's*; ``sentinel_kwargs`` are for the sentinels.
  Every new connection asks the sentinels where the master is, so a reconnect after a
  failover lands on the new master.

Redis Cluster is refused: kombu has no Cluster transport, so no Celery app can use one as its
broker, and an exporter pointed at one would only report CROSSSLOT and MOVED noise.

It also turns broker errors into what they mean for a user (``describe``) and into the
``reason`` label of ``celery_exporter_event_source_reconnects_total`` (``reason_of``).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from exporter.logs import mask_url

if TYPE_CHECKING:
    from exporter.config import Config

REDIS_SCHEMES = ("redis", "rediss")
SENTINEL_SCHEMES = ("sentinel",)
FAST_PATH_SCHEMES = REDIS_SCHEMES + SENTINEL_SCHEMES
# Schemes people try for Redis Cluster (redis-py-cluster, lettuce, node clients, dify).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster", "redis-cluster", "rediscluster")
CLUSTER_REPLIES = ("MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN", "TRYAGAIN")
SENTINEL_PORT = 26379
RECONNECT_REASONS = ("closed", "auth", "permission", "protocol", "timeout", "error")
_SSL_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
}
_COMMAND = re.compile(r"run the '([^']+)' command")
_ACCESS = re.compile(r"access one of the (keys|channels) used as arguments")


class BrokerIsCluster(Exception):
    """The broker is a Redis Cluster node: a configuration mistake, not a transient fault."""


class SubscriptionClosed(redis.ConnectionError):
    """Redis closed the subscriber's connection (restart, CLIENT KILL, output buffer limit)."""


class SubscriptionRefused(redis.RedisError):
    """Redis answered the subscription with an error reply (NOAUTH, NOPERM, ...)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


# ---------------------------------------------------------------------------- URLs


def split_urls(url: str) -> list[str]:
    """``sentinel://a;sentinel://b`` -> both URLs (kombu's failover list syntax)."""
    return [part.strip() for part in url.split(";") if part.strip()]


def scheme_of(url: str) -> str:
    first = split_urls(url)[0] if url.strip() else ""
    return first.partition("://")[0].lower() if "://" in first else ""


def _authority(url: str) -> tuple[str, str]:
    """(userinfo, host[:port]) as the user typed them: userinfo ends at the *last* ``@``,
    so a password with an unencoded ``@`` splits where Redis's own URL parser splits it."""
    rest = url.partition("://")[2]
    at = rest.rfind("@")
    userinfo, hostpart = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    return userinfo, re.split(r"[/?#]", hostpart, maxsplit=1)[0]


def url_problem(url: str) -> str | None:
    """Why a Redis or Sentinel broker URL cannot work, in one line; None when it can."""
    for one in split_urls(url):
        userinfo, hostport = _authority(one)
        if any(c in userinfo for c in "/?#"):
            return (
                f"the password in the broker URL {mask_url(one)} contains '/', '?' or '#': "
                "percent-encode it (%2F, %3F, %23)"
            )
        parts = urlsplit(one)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            return f"invalid port in the broker URL {mask_url(one)}"
        if not hostport.strip() and not parts.path.startswith("/"):
            return f"the broker URL {mask_url(one)} has no host"
        try:
            redis_db(one)
        except ValueError:
            return f"the database {parts.path!r} in the broker URL {mask_url(one)} is not a number"
    return None


def event_pattern(db: int, global_keyprefix: str = "") -> str:
    """The channel pattern kombu publishes Celery events on (fanout over pub/sub)."""
    return f"{global_keyprefix}/{db}.celeryev/*"


def redis_db(url: str) -> int:
    """The database number of a redis://, rediss:// or sentinel:// URL (the first one)."""
    path = urlsplit(split_urls(url)[0]).path.strip("/")
    return int(path) if path else 0


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return unquote(parts.hostname or "127.0.0.1"), parts.port or default_port


# ---------------------------------------------------------------------------- options


def ssl_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``--broker-ssl-option`` values as redis-py and kombu take them (cert_reqs -> enum)."""
    result = dict(options)
    for key in ("ssl_cert_reqs", "cert_reqs"):
        value = result.get(key)
        if isinstance(value, str):
            try:
                result[key] = _CERT_REQS[value.strip().lower()]
            except KeyError:
                raise ValueError(
                    f"--broker-ssl-option {key}={value}: use none, optional or required"
                ) from None
    return result


def celery_broker_options(
    transport_options: Mapping[str, Any], ssl_opts: Mapping[str, Any]
) -> dict[str, Any]:
    """Celery settings for the exporter's own app (inspect, the generic receiver)."""
    settings: dict[str, Any] = {"broker_transport_options": dict(transport_options)}
    if ssl_opts:
        settings["broker_use_ssl"] = ssl_options(ssl_opts)
    return settings


def redis_client(
    url: str,
    transport_options: Mapping[str, Any] | None = None,
    ssl_opts: Mapping[str, Any] | None = None,
    timeout: float = 5.0,
    retries: int = 0,
) -> redis.Redis:
    """A redis-py client for the broker: plain, TLS or through Sentinel.

    ``retries``: redis-py's own retries of a failed command. The exporter's loops decide
    when to try again (poll interval, reconnect backoff), so by default there are none and
    an error surfaces at once with its real cause.
    """
    transport_options = transport_options or {}
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        # RESP2: pub/sub messages as plain arrays, and any Redis >= 2.8 speaks it (RESP3's
        # HELLO also turns "needs a password" into a confusing HELLO error).
        "protocol": 2,
        "retry": Retry(NoBackoff(), retries),
    }
    tls = {k: v for k, v in ssl_options(ssl_opts or {}).items() if k in _SSL_KEYS}
    scheme = scheme_of(url)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_master(url, transport_options, tls, common)
    if scheme == "rediss":
        common.update(tls)
    # URL query arguments (?ssl_cert_reqs=...) win over these, as in redis-py and kombu.
    return redis.Redis.from_url(url, **common)


def _sentinel_master(
    url: str,
    transport_options: Mapping[str, Any],
    tls: Mapping[str, Any],
    common: dict[str, Any],
) -> redis.Redis:
    """kombu's ``SentinelChannel._sentinel_managed_pool``, with redis-py's Sentinel."""
    master_name = transport_options.get("master_name")
    if not master_name:
        raise ValueError("a sentinel:// broker URL needs --broker-transport-option master_name=")
    urls = split_urls(url)
    first = urlsplit(urls[0])
    sentinels = [_host_port(one, SENTINEL_PORT) for one in urls]
    sentinel_kwargs = transport_options.get("sentinel_kwargs")
    if sentinel_kwargs is not None and not isinstance(sentinel_kwargs, Mapping):
        raise ValueError("--broker-transport-option sentinel_kwargs= must be a JSON object")
    sentinel_kwargs = {
        **{k: v for k, v in common.items() if k.startswith("socket_")},
        **(sentinel_kwargs or {}),
    }
    master: dict[str, Any] = {**common, "db": redis_db(url)}
    if first.username:
        master["username"] = unquote(first.username)
    if first.password:
        master["password"] = unquote(first.password)
    if tls:  # Celery's broker_use_ssl turns TLS on for the master connections, as in kombu
        master.update(tls, ssl=True)
    manager = Sentinel(
        sentinels,
        min_other_sentinels=int(transport_options.get("min_other_sentinels", 0)),
        sentinel_kwargs=sentinel_kwargs,
    )
    return manager.master_for(str(master_name), redis_class=redis.Redis, **master)


# ---------------------------------------------------------------------------- errors


def is_cluster_reply(message: str) -> bool:
    return message.split(" ", 1)[0].upper() in CLUSTER_REPLIES


def is_cluster_error(exc: BaseException) -> bool:
    """A reply only a Redis Cluster node gives (redis-py strips the code from the text)."""
    return isinstance(exc, redis.ResponseError) and is_cluster_reply(_status(exc) or str(exc))


def refuse_cluster(client: redis.Redis, url: str) -> None:
    """Raise :class:`BrokerIsCluster` if the server runs in cluster mode.

    ``INFO cluster`` says so directly; a least-privilege ACL user may not run INFO, and then
    a cluster still shows itself by the MOVED/CROSSSLOT/CLUSTERDOWN replies the poller gets.
    """
    try:
        info = client.info("cluster")
    except redis.ResponseError:
        return
    if info.get("cluster_enabled") in (1, "1"):
        raise BrokerIsCluster(cluster_message(url))


def cluster_message(url: str) -> str:
    return (
        f"the broker {mask_url(url)} is a Redis Cluster node: Celery's Redis transport "
        "(kombu) does not support Redis Cluster, so no worker can use it as its broker; "
        "point --broker-url at a standalone Redis or at Sentinel (sentinel://)"
    )


def reply_reason(reply: str) -> str:
    """The reconnect reason for an error reply to the subscription."""
    code = reply.split(" ", 1)[0].upper()
    if code in ("NOAUTH", "WRONGPASS"):
        return "auth"
    if code == "NOPERM":
        return "permission"
    return "error"


class Outages:
    """An event source's connection history: reconnects counted by reason, and which of
    them deserve a log line (one per outage and reason, so a broker that stays down for an
    hour logs once, not once per retry)."""

    def __init__(self) -> None:
        self.reconnects = dict.fromkeys(RECONNECT_REASONS, 0)
        self.ever_subscribed = False
        self._logged_reason: str | None = None  # the reason already logged in this outage

    def subscribed(self) -> bool:
        """The subscription is up; True when it was up before (a restoration)."""
        restored, self.ever_subscribed, self._logged_reason = self.ever_subscribed, True, None
        return restored

    def lost(self, exc: BaseException) -> tuple[str, bool] | None:
        """Count ``exc``; (reason, whether it ended a live subscription) when it should be
        logged, None when this outage already logged that reason."""
        reason = reason_of(exc)
        self.reconnects[reason] += 1
        was_subscribed = self._logged_reason is None and self.ever_subscribed
        if reason == self._logged_reason:
            return None
        self._logged_reason = reason
        return reason, was_subscribed


def reason_of(exc: BaseException) -> str:
    """The ``reason`` label for an event-source reconnect caused by ``exc``."""
    if isinstance(exc, SubscriptionRefused):
        return reply_reason(exc.reply)
    if isinstance(exc, redis.AuthenticationError) or _status(exc) in ("NOAUTH", "WRONGPASS"):
        return "auth"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return "permission"
    if isinstance(exc, (hiredis.ProtocolError, redis.exceptions.InvalidResponse)):
        return "protocol"
    if isinstance(exc, (redis.TimeoutError, TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, SubscriptionClosed | ConnectionResetError | BrokenPipeError):
        return "closed"
    text = str(exc).lower()
    if "access_refused" in text or "authentication" in text:  # AMQP (kombu/py-amqp)
        return "auth"
    if "closed" in text or "connection reset" in text:
        return "closed"
    return "error"


def _status(exc: BaseException) -> str:
    return str(getattr(exc, "status_code", "") or "").upper()


def describe(exc: BaseException, url: str) -> str:
    """One line saying what a broker error means for the user (start-up check, logs)."""
    if isinstance(exc, BrokerIsCluster):
        return str(exc)
    masked = mask_url(url)
    reason = reason_of(exc)
    if reason == "auth":
        return f"the broker needs a password (or the password is wrong): {masked}"
    if reason == "permission":
        return f"the broker user lacks permission for {_denied(exc)}: {masked}"
    if is_cluster_error(exc):
        return cluster_message(url)
    return f"cannot reach broker {masked}: {exc}"


def _denied(exc: BaseException) -> str:
    """What NOPERM refused: a command name, or keys/channels."""
    text = str(exc.reply if isinstance(exc, SubscriptionRefused) else exc)
    match = _COMMAND.search(text)
    if match:
        return match.group(1).upper()
    match = _ACCESS.search(text)
    if match:
        return f"the {match.group(1)} it needs"
    return "a command it needs"


# ---------------------------------------------------------------------------- start-up check


class BrokerUnusable(Exception):
    """The broker cannot serve the exporter; the message is one line for the user."""


def check(config: Config) -> None:
    """One attempt to use the broker as the exporter will (``--no-wait-for-broker``).

    Redis: PING, refuse a Cluster node, and subscribe to the event channels once, so a
    missing password, an ACL user without the rights it needs, or a cluster is named now
    rather than discovered later as ``broker_up 0``. Other brokers: connect once.
    """
    url = config.broker_url
    try:
        if config.scheme in FAST_PATH_SCHEMES:
            client = broker_client(config, timeout=5.0)
            try:
                client.ping()
                refuse_cluster(client, url)
                if config.uses_redis_fast_path:
                    pattern = event_pattern(config.redis_db, config.global_keyprefix)
                    _probe_subscription(client, pattern, url)
            finally:
                client.close()
        else:
            from kombu import Connection  # only for brokers other than Redis

            tls = ssl_options(config.broker_ssl_options) or None
            with Connection(url, connect_timeout=5, ssl=tls) as conn:
                conn.ensure_connection(max_retries=1)
    except BrokerUnusable:
        raise
    except Exception as exc:  # every transport has its own error types: describe them all
        raise BrokerUnusable(describe(exc, url)) from None


def broker_client(config: Config, timeout: float = 5.0, retries: int = 0) -> redis.Redis:
    """``redis_client`` for a :class:`~exporter.config.Config`."""
    return redis_client(
        config.broker_url,
        config.broker_transport_options,
        config.broker_ssl_options,
        timeout=timeout,
        retries=retries,
    )


def _probe_subscription(client: redis.Redis, pattern: str, url: str) -> None:
    conn = client.connection_pool.make_connection()
    try:
        conn.connect()
        conn.send_command("PSUBSCRIBE", pattern)
        reply = conn.read_response()
    except redis.exceptions.NoPermissionError:
        raise BrokerUnusable(
            f"the broker user lacks permission for PSUBSCRIBE {pattern}: {mask_url(url)}"
        ) from None
    finally:
        conn.disconnect()
    if not (isinstance(reply, list) and reply and reply[0] in (b"psubscribe", "psubscribe")):
        raise BrokerUnusable(f"unexpected reply to PSUBSCRIBE {pattern}: {reply!r}")
