"""Prometheus and Alertmanager configuration as dicts, for the committed examples and for
the local stack and tests that write their own config files at run time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

EXPORTER_JOB = "celery-exporter"
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:5001/alerts"

# While the broker is unreachable, workers cannot heartbeat and the exporter cannot poll:
# the consequences would page alongside the cause. Only the cause pages.
BROKER_CONSEQUENCES = (
    "CeleryWorkerDown",
    "CeleryBrokerPollStale",
    "CeleryEventsNotArriving",
    "CeleryQueueNoConsumers",
)


def prometheus_config(
    targets: Sequence[str],
    rule_files: Sequence[str],
    alertmanagers: Sequence[str] = (),
    scrape_interval: str = "15s",
    evaluation_interval: str | None = None,
    job_name: str = EXPORTER_JOB,
    basic_auth: tuple[str, str] | None = None,
    scheme: str = "http",
) -> dict[str, Any]:
    """A prometheus.yml scraping the exporter ``targets`` (``host:port``) with the rules loaded.

    ``evaluation_interval`` defaults to the scrape interval, so that alerts react to every
    scrape; ``basic_auth`` is (username, password) for an exporter behind --web.config-file.
    """
    scrape: dict[str, Any] = {
        "job_name": job_name,
        "scheme": scheme,
        "static_configs": [{"targets": list(targets)}],
    }
    if basic_auth is not None:
        scrape["basic_auth"] = {"username": basic_auth[0], "password": basic_auth[1]}
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "rule_files": list(rule_files),
        "scrape_configs": [scrape],
    }
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
        }
    return config


def alertmanager_config(
    webhook_url: str = DEFAULT_WEBHOOK_URL,
    group_wait: str = "30s",
    group_interval: str = "5m",
    repeat_interval: str = "4h",
    group_by: Sequence[str] = ("alertname", "job", "queue_name"),
    send_resolved: bool = True,
) -> dict[str, Any]:
    """An alertmanager.yml routing every alert to one webhook receiver."""
    return {
        "route": {
            "receiver": "webhook",
            "group_by": list(group_by),
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [
            {
                "name": "webhook",
                "webhook_configs": [{"url": webhook_url, "send_resolved": send_resolved}],
            }
        ],
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="CeleryBrokerUnreachable"'],
                "target_matchers": [f'alertname=~"{"|".join(BROKER_CONSEQUENCES)}"'],
                "equal": ["job", "instance"],
            }
        ],
    }
