"""Unit tests of the workload's pure functions: configuration, URL policy, reports, backoff."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.workload_stack import settings_for
from workload import reports
from workload.app import celery_config
from workload.config import UrlPolicy, mask_url
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


def test_passwords_are_masked_in_urls() -> None:
    assert mask_url("redis://:s3cret@host:6380/0") == "redis://:***@host:6380/0"
    assert mask_url("redis://user:s3cret@host/1") == "redis://user:***@host/1"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme 'ftp'"),
        ("//example.com/x", "scheme '(none)'"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://localhost/", "private"),
        ("http://127.0.0.1/", "not public"),
        ("http://[::1]/", "not public"),
        ("http://[fe80::1%25eth0]/", "not public"),
        ("http://100.64.0.1/", "not public"),
        ("http://2130706433/", "non-public"),  # 127.0.0.1 written as one number
        ("http://x/" + "a" * 3000, "longer than"),
        ("http://exa mple.com/", "whitespace"),
        (42, "non-empty string"),
    ],
)
def test_urls_outside_the_policy_are_refused(url: object, reason: str) -> None:
    with pytest.raises(UrlNotAllowed) as caught:
        check_url(url, STRICT, resolve=True)
    assert reason in str(caught.value)


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
