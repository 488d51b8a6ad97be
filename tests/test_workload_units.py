"""Unit tests of the workload's pure functions and CLIs' edges: configuration, queues, URL
policy, reports, backoff, the console scripts without the workload extra, workload-dlq's
error line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.procs import RedisServer, free_port, wait_until
from tests.support.workload_stack import BIN, settings_for
from workload import queues, reports
from workload.app import celery_config
from workload.config import ConfigError, UrlPolicy
from workload.errors import ReportInputError, UrlNotAllowed
from workload.urls import check_url

STRICT = UrlPolicy(schemes=("http", "https"), hosts=(), allow_private=False)


def test_the_article_settings_are_in_force_by_default() -> None:
    conf = celery_config(settings_for({}))
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == ["json"]
    assert conf["task_acks_late"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 3600
    assert conf["timezone"] == "UTC" and conf["enable_utc"] is True
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert conf["task_track_started"] is True
    assert conf["broker_connection_retry_on_startup"] is True
    assert conf["result_expires"] == 86400
    routes = conf["task_routes"]
    assert routes["workload.tasks.generate_report"] == {"queue": "cpu"}
    assert routes["workload.tasks.send_welcome_email"] == {"queue": "email"}
    assert routes["workload.tasks.process_image"] == {"queue": "io"}
    assert conf["task_default_queue"] == "default"


def test_settings_follow_the_environment() -> None:
    conf = celery_config(
        settings_for({"WORKLOAD_VISIBILITY_TIMEOUT": "7", "WORKLOAD_PREFETCH_MULTIPLIER": "4"})
    )
    assert conf["broker_transport_options"]["visibility_timeout"] == 7
    assert conf["worker_prefetch_multiplier"] == 4


def test_a_bad_setting_stops_the_worker_with_one_clear_line() -> None:
    env = {**os.environ, "WORKLOAD_VISIBILITY_TIMEOUT": "an hour"}
    done = subprocess.run(
        [sys.executable, "-c", "import workload.app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "WORKLOAD_VISIBILITY_TIMEOUT must be a whole number" in done.stderr
    assert "Traceback" not in done.stderr


def test_workload_dlq_names_an_unreachable_redis_once_with_its_password_masked() -> None:
    url = f"redis://admin:s3cret@127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [str(BIN / "workload-dlq"), "list"],
        env={**os.environ, "CELERY_BROKER_URL": url, "WORKLOAD_REDIS_CONNECT_TIMEOUT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach Redis at redis://")
    assert "s3cret" not in done.stderr
    # The exporter's masking (exporter.logs.mask_url), and the URL said once.
    from exporter.logs import mask_url

    assert lines[0].count(mask_url(url)) == 1
    assert lines[0].count("redis://") == 1


def test_the_queue_definition_connects_nowhere_and_matches_the_routes() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, workload.queues as q; "
         "print(','.join(q.QUEUES)); print(sorted(m for m in sys.modules "
         "if m.partition('.')[0] in {'redis', 'celery', 'kombu', 'socket'}))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    names, imported = done.stdout.splitlines()
    assert names == "cpu,io,email,default,dead_letter"
    assert imported == "[]"  # nothing that could connect anywhere
    conf = celery_config(settings_for({}))
    assert {route["queue"] for route in conf["task_routes"].values()} <= set(queues.QUEUES)
    assert conf["task_default_queue"] in queues.QUEUES
    assert queues.redis_lists("cpu") == ("cpu", "cpu\x06\x163", "cpu\x06\x166", "cpu\x06\x169")


def test_backlog_limits_have_a_default_and_per_queue_overrides() -> None:
    from workload.config import backlog_limits

    assert settings_for({}).api_backlog_limits == {"cpu": 10_000, "io": 10_000, "email": 10_000}
    env = {"WORKLOAD_API_MAX_BACKLOG": "500", "WORKLOAD_API_BACKLOG_LIMITS": "email=20,io=0"}
    assert settings_for(env).api_backlog_limits == {"cpu": 500, "io": 0, "email": 20}
    with pytest.raises(ConfigError, match="unknown queue 'lunch'"):
        settings_for({"WORKLOAD_API_BACKLOG_LIMITS": "lunch=3"})
    with pytest.raises(ConfigError, match="WORKLOAD_API_BACKLOG_LIMITS"):
        settings_for({"WORKLOAD_API_BACKLOG_LIMITS": "cpu=many"})
    with mock_env({"WORKLOAD_API_BACKLOG_LIMITS": "cpu=7"}):
        assert backlog_limits()["cpu"] == 7  # what the status page reads


def mock_env(env: dict[str, str]):  # type: ignore[no-untyped-def]
    from unittest import mock

    return mock.patch.dict(os.environ, env)


# A sitecustomize-free way to make the workload extra "not installed": a meta path finder
# that refuses its modules, then the console script's own entry point, as pip wrote it.
WITHOUT_EXTRA = """
import importlib.abc, importlib.metadata, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"flask", "werkzeug", "gunicorn", "requests", "PIL"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
script = sys.argv[1]
(entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts")
            if e.name == script]
sys.argv = [script, "--help"]
sys.exit(entry.load()())
"""


@pytest.mark.parametrize("script", ["workload-api", "workload-traffic"])
def test_scripts_without_the_workload_extra_name_it_in_one_line(script: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "pip install 'celery-observatory[workload]'" in done.stderr
    assert done.stderr.startswith(f"{script}: the ")
    assert "Traceback" not in done.stderr


def test_scripts_with_the_extra_still_run() -> None:
    done = subprocess.run(
        [str(BIN / "workload-api"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "gunicorn" in done.stdout


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme 'ftp'"),
        ("//example.com/x", "scheme '(none)'"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://localhost/", "private"),
        ("http://127.0.0.1/", "not public"),
        ("http://[::1]/", "not public"),
        ("http://[fe80::1%25eth0]/", "non-public"),
        ("http://100.64.0.1/", "not public"),
        ("http://2130706433/", "non-public"),  # 127.0.0.1 written as one number
        ("http://\u0661\u0662\u0667.\u0660.\u0660.\u0661/", "not a valid host name"),
        ("http://x/" + "a" * 3000, "longer than"),
        ("http://exa mple.com/", "whitespace"),
        (42, "non-empty string"),
    ],
)
def test_urls_outside_the_policy_are_refused(url: object, reason: str) -> None:
    with pytest.raises(UrlNotAllowed) as caught:
        check_url(url, STRICT, resolve=True)
    assert reason in str(caught.value)


LOOPBACK_SPELLINGS = [
    "http://2130706433/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://0177.0.0.1/",
    "http://0/",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",  # fullwidth digits: 127.0.0.1
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[64:ff9b::7f00:1]/",  # NAT64
    "http://[2002:7f00:1::1]/",  # 6to4
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
]


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS)
@pytest.mark.parametrize("resolve", [False, True], ids=["api", "worker"])
def test_every_spelling_of_a_private_address_is_refused_by_api_and_worker(
    url: str, resolve: bool
) -> None:
    with pytest.raises(UrlNotAllowed, match="WORKLOAD_ALLOW_PRIVATE_NETWORKS"):
        check_url(url, STRICT, resolve=resolve)


def test_public_ipv6_and_nat64_of_a_public_address_pass() -> None:
    assert check_url("http://[2606:4700::1111]/", STRICT, resolve=True)
    assert check_url("http://[64:ff9b::5db8:d70e]/", STRICT, resolve=True)  # 93.184.215.14


def test_the_host_allow_list_supports_exact_names_and_wildcards() -> None:
    policy = UrlPolicy(("https",), ("images.example.com", "*.cdn.example.net"), True)
    assert check_url("https://images.example.com/a.png", policy)
    assert check_url("https://eu.cdn.example.net/a.png", policy)
    with pytest.raises(UrlNotAllowed, match="WORKLOAD_ALLOWED_HOSTS"):
        check_url("https://evil.example.com/a.png", policy)
    with pytest.raises(UrlNotAllowed, match="WORKLOAD_ALLOWED_HOSTS"):
        check_url("https://cdn.example.net.evil.org/a.png", policy)


def test_public_addresses_pass_without_dns() -> None:
    assert check_url("http://93.184.215.14/x.png", STRICT, resolve=True)


def test_report_validation_names_the_bad_field() -> None:
    with pytest.raises(ReportInputError, match=r"data\.rows"):
        reports.validate(1, {"rows": [1, float("inf")]}, 100)
    with pytest.raises(ReportInputError, match=r"data\.size"):
        reports.validate(1, {"size": 101}, 100)
    with pytest.raises(ReportInputError, match="unknown keys: colour"):
        reports.validate(1, {"colour": "red"}, 100)
    assert reports.validate(1, {}, 100)["size"] == 100  # the default size, capped


def test_report_statistics_are_exact() -> None:
    stats = reports.summarise([5.0, 1.0, 3.0, 2.0, 4.0], rounds=2)
    assert (stats["count"], stats["sum"], stats["mean"], stats["p50"]) == (5, 15.0, 3.0, 3.0)
    assert (stats["min"], stats["max"], stats["p95"]) == (1.0, 5.0, 5.0)
    assert stats["digest"] != reports.summarise([5.0, 1.0, 3.0, 2.0, 4.0], rounds=3)["digest"]


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    from workload.tasks import backoff

    # Defaults: base 1 s, cap 300 s, jitter on.
    assert all(0 <= backoff(0) <= 1 for _ in range(100))
    assert all(0 <= backoff(4) <= 16 for _ in range(100))
    assert max(backoff(30) for _ in range(200)) <= 300
    assert len({backoff(6) for _ in range(20)}) > 1  # jittered, not fixed


def test_docs_list_every_environment_variable_the_workload_reads() -> None:
    import re

    from tests.support.procs import ROOT

    source = "".join(p.read_text() for p in (ROOT / "workload").glob("*.py"))
    variables = set(re.findall(r'"(WORKLOAD_[A-Z_]+)"', source))
    docs = (ROOT / "docs" / "workload.md").read_text()
    assert "WORKLOAD_API_MAX_BACKLOG" in variables
    # The table writes families compactly: `WORKLOAD_SMTP_HOST` / `_PORT`.
    shown = lambda v: f"`{v}`" in docs or f"`_{v.rsplit('_', 1)[1]}`" in docs  # noqa: E731
    assert sorted(v for v in variables if not shown(v)) == []


def test_the_backlog_cache_reads_a_queue_at_most_once_per_interval(
    redis_server: RedisServer,
) -> None:
    from workload.admission import BacklogCache, Backlogged, admit

    broker = redis_server.client()
    cache = BacklogCache(max_age=0.5)
    broker.rpush("email", "m1")
    broker.rpush("email\x06\x163", "m2")  # priority 3 counts too
    assert cache.length(broker, "email") == 2
    broker.rpush("email", "m3")
    assert cache.length(broker, "email") == 2  # reused within the interval
    admit(broker, "email", 3, cache)  # so still admitted
    wait_until(lambda: cache.length(broker, "email") == 3, timeout=5, message="refresh")
    with pytest.raises(Backlogged, match="3 waiting, limit 3"):
        admit(broker, "email", 3, cache)
    admit(broker, "email", 0, cache)  # 0: no limit
