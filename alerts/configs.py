"""Prometheus and Alertmanager configuration as dicts, for the committed examples and for
the local stack and tests that write their own config files at run time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alerts.rules import rule_groups
from alerts.settings import DEFAULTS, AlertSettings, with_overrides

EXPORTER_JOB = "celery-exporter"
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:5001/alerts"
# Where compose publishes the runbook server (alerts/runbook_server.py as a service); the
# compose rules copy links there.
COMPOSE_RUNBOOKS_URL = "http://127.0.0.1:8088"

# While the broker is unreachable, workers cannot heartbeat, beat cannot send and the exporter
# cannot poll: the consequences would page alongside the cause. Only the cause pages.
BROKER_CONSEQUENCES = (
    "CeleryWorkerDown",
    "CeleryTaskLost",
    "CeleryPeriodicTaskMissed",
    "CeleryBrokerPollStale",
    "CeleryEventsNotArriving",
    "CeleryQueueNoConsumers",
    "CeleryQueueDrainTimeTooLong",
)
# The consequences are deduplicated across exporter replicas (no `instance` label), so the
# inhibition matches on the labels that tell Celery deployments apart; a label both alerts
# lack counts as equal.
INHIBIT_EQUAL = ("job", "namespace", "cluster")


def stack_rules(runbook_base_url: str, settings: AlertSettings = DEFAULTS) -> dict[str, Any]:
    """The rules file (a dict; write it with ``to_yaml``) for a stack that serves the runbooks
    itself at ``runbook_base_url`` (e.g. ``RunbookServer().start().base_url``)."""
    return rule_groups(with_overrides(settings, {"runbook_base_url": runbook_base_url}))


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
                "equal": list(INHIBIT_EQUAL),
            }
        ],
    }
