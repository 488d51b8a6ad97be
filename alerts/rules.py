"""Alerting rules and the whole rules file, built from :class:`~alerts.settings.AlertSettings`.

Every expression is scoped by the ``selector`` setting and replica-safe (see
:mod:`alerts.promql`): alerts about tasks, queues and workers take ``max without (instance,
pod)`` first, so two exporters watching one broker raise one alert, and losing either changes
nothing. Alerts about one exporter process (broker unreachable, events not arriving, dropped
events, stale polls, a replica down) keep ``instance``: they are about that process.
"""

from __future__ import annotations

from typing import Any

from alerts import slo
from alerts.alert import Alert, pct
from alerts.promql import PromQL, block, duration, expr, one_of
from alerts.recording import (
    DRAIN_TIME,
    FAILED_RATE,
    FAILURE_RATIO,
    RATE_WINDOW_SECONDS,
    SUCCEEDED_RATE,
    UTILISATION,
    recording_rules,
)
from alerts.settings import AlertSettings

__all__ = ["Alert", "alerts", "recording_rules", "rule_groups"]

RECORDING_GROUP = "celery-observatory.recording"
ALERTING_GROUP = "celery-observatory.alerts"


def _event_loss_expr(s: AlertSettings, q: PromQL) -> str:
    # A worker whose task events are all lost has no started series at all: `or ... * 0`
    # gives it an explicit zero, so the worst loss alerts too.
    accepted = q.increase("celery_worker_tasks_processed", s.event_loss_window)
    started = q.increase("celery_task_started_total", s.event_loss_window)
    return expr(
        f"""
        (
          sum without (name, queue_name) ({started})
          or
          {accepted} * 0
        )
        < {s.event_loss_ratio:g} * {accepted}
        and
        {accepted} >= {s.event_loss_min_tasks}
        """
    )


def _counted_in_window(q: PromQL, metric: str, window: str) -> str:
    """How much a counter grew over ``window``, per series, deduplicated across replicas.

    ``increase()`` misses a series' first step: a counter created at 1 by the first lost task
    of a worker (every pod has a new hostname) has no earlier sample to grow from. The second
    branch counts a series that did not exist ``window`` ago, but only where Prometheus
    scraped that exporter ``window`` ago, so a freshly started Prometheus does not take old
    counts for new ones.
    """
    series = q.sel(metric)
    up_then = f"{q.sel('up')} offset {window}"
    return block(
        f"max without ({q.replicas})",
        expr(
            f"""
            increase({series}[{window}]) > 0
            or
            ({series} unless {series} offset {window}) > 0
              and on (job, instance) {up_then}
            """
        ),
    )


def _task_alerts(s: AlertSettings, q: PromQL) -> list[Alert]:
    return [
        Alert(
            name="CeleryTaskFailureRatioHigh",
            expr=(
                f"{q.sel(FAILURE_RATIO)} > {s.failure_ratio:g}\nand\n"
                f"({q.sel(SUCCEEDED_RATE)} + {q.sel(FAILED_RATE)}) * {RATE_WINDOW_SECONDS} "
                f">= {s.failure_min_tasks}"
            ),
            for_=s.failure_for,
            severity="warning",
            summary="Task {{ $labels.name }} fails too often.",
            description=(
                "{{ $value | humanizePercentage }} of the runs of {{ $labels.name }} on queue "
                "{{ $labels.queue_name }} failed over the last 5m (threshold "
                f"{pct(s.failure_ratio)}, counted only with at least {s.failure_min_tasks} "
                "finished runs in 5m)."
            ),
        ),
        Alert(
            name="CeleryEventLoss",
            expr=_event_loss_expr(s, q),
            for_=s.event_loss_for,
            severity="warning",
            summary="Task events from {{ $labels.hostname }} are being lost.",
            description=(
                "The exporter counted only {{ $value | humanize }} task-started events from "
                f"{{{{ $labels.hostname }}}} over the last {s.event_loss_window}, less than "
                f"{pct(s.event_loss_ratio)} of the tasks the worker itself reports having "
                "accepted (heartbeat 'processed'). Task counters and latencies undercount."
            ),
        ),
        Alert(
            name="CeleryTaskLost",
            expr=f"{_counted_in_window(q, 'celery_task_lost_total', s.lost_window)} > 0",
            for_=s.lost_for,
            severity="warning",
            summary="Tasks {{ $labels.name }} died with worker {{ $labels.hostname }}.",
            description=(
                "{{ $labels.hostname }} was lost or went offline holding unfinished "
                "{{ $labels.name }} tasks (queue {{ $labels.queue_name }}): "
                f"{{{{ $value | humanize }}}} in the last {s.lost_window}. Without acks_late "
                "they are gone; with it they are redelivered after visibility_timeout."
            ),
        ),
        Alert(
            name="CeleryTaskRedelivered",
            expr=(
                f"{_counted_in_window(q, 'celery_task_redelivered_total', s.redelivered_window)}"
                " > 0"
            ),
            for_=s.redelivered_for,
            severity="warning",
            summary="Tasks {{ $labels.name }} were delivered twice: duplicate runs.",
            description=(
                "{{ $labels.hostname }} received {{ $value | humanize }} {{ $labels.name }} "
                "tasks (queue {{ $labels.queue_name }}) a second time in the last "
                f"{s.redelivered_window}: a worker crashed holding them, or they ran longer "
                "than visibility_timeout. Unless the task is idempotent, its effect happened "
                "twice."
            ),
        ),
        *_running_too_long(s, q),
        *_periodic_missed(s, q),
    ]


def _per_label(label: str, cases: list[tuple[str, str]], default: str) -> str:
    """A template that picks the text for ``$labels.<label>``: generated if/else if chain."""
    if not cases:
        return default
    chain = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq $labels.{label} "{value}" }}}}{text}'
        for i, (value, text) in enumerate(cases)
    )
    return f"{chain}{{{{ else }}}}{default}{{{{ end }}}}"


def _running_too_long(s: AlertSettings, q: PromQL) -> list[Alert]:
    """Each listed task against its own limit, every other task against the default."""
    metric = "celery_task_oldest_running_age_seconds"
    limits = s.running_too_long_per_task
    branches = [
        f"{q.one(q.sel(metric, one_of('name', [task])))} > {seconds:g}"
        for task, seconds in limits.items()
    ]
    others = [f'name!="{task}"' for task in limits]
    branches.append(f"{q.one(q.sel(metric, *others))} > {s.running_too_long_seconds:g}")
    limit = _per_label(
        "name",
        [(task, f"{sec:g}s") for task, sec in limits.items()],
        f"{s.running_too_long_seconds:g}s",
    )
    return [
        Alert(
            name="CeleryTaskRunningTooLong",
            expr="\nor\n".join(branches),
            for_=s.running_too_long_for,
            severity="warning",
            summary="A {{ $labels.name }} task has been running too long.",
            description=(
                "The oldest running {{ $labels.name }} task (queue {{ $labels.queue_name }}) "
                "started {{ $value | humanizeDuration }} ago; the limit for this task is "
                f"{limit}. It is stuck, or waits on something that never answers."
            ),
        )
    ]


def _periodic_missed(s: AlertSettings, q: PromQL) -> list[Alert]:
    """Each periodic task sent too long ago, or not at all within its interval.

    The second kind fires when the series is absent for the whole interval
    (``absent_over_time``), but only when this Prometheus scraped the exporter a full
    interval ago and does now: a fresh Prometheus, or a stopped exporter (its own alert), does
    not page for every periodic task. An exporter restart is safe too: the last sample before
    it stays in the window, and the next run creates the series again.
    """
    if not s.periodic_tasks:
        return []
    metric = "celery_task_last_sent_timestamp_seconds"
    up = q.sel("up", f'job="{s.exporter_job}"')
    stale, absent = [], []
    for task, seconds in s.periodic_tasks.items():
        interval = duration(seconds)
        selector = q.sel(metric, f'name="{task}"')
        stale.append(f"time() - {q.one(selector)} > {seconds:g}")
        absent.append(
            expr(
                f"""
                (
                  absent_over_time({selector}[{interval}])
                  and on () max({up} offset {interval}) == 1
                  and on () max({up}) == 1
                )
                """
            )
        )
    interval = _per_label("name", [(t, f"{sec:g}s") for t, sec in s.periodic_tasks.items()], "")
    return [
        Alert(
            name="CeleryPeriodicTaskMissed",
            expr="\nor\n".join([*stale, *absent]),
            for_=s.periodic_missed_for,
            severity="warning",
            summary="Periodic task {{ $labels.name }} was not sent in time.",
            description=(
                "{{ $labels.name }} {{ if gt $value 1.0 }}was last sent "
                "{{ $value | humanizeDuration }} ago{{ else }}was not sent at all while the "
                f"exporter watched{{{{ end }}}}; it must be sent at least every {interval}. "
                "Celery beat is down or stuck, or the task left its schedule."
            ),
        )
    ]


def _queue_alerts(s: AlertSettings, q: PromQL) -> list[Alert]:
    length = q.one(q.sel("celery_queue_length"))
    return [
        Alert(
            name="CeleryQueueBacklogGrowing",
            expr=expr(
                f"""
                {length} > {s.backlog_min_length}
                and
                {q.one(f"deriv({q.sel('celery_queue_length')}[{s.backlog_window}])")} > 0
                """
            ),
            for_=s.backlog_for,
            severity="warning",
            summary="Queue {{ $labels.queue_name }} backlog keeps growing.",
            description=(
                "Queue {{ $labels.queue_name }} holds {{ $value | humanize }} messages and "
                f"grew over the last {s.backlog_window} (alerting above "
                f"{s.backlog_min_length}): producers outpace its workers."
            ),
        ),
        Alert(
            name="CeleryQueueOldestMessageTooOld",
            expr=(
                f"{q.one(q.sel('celery_queue_oldest_message_age_seconds'))} "
                f"> {s.oldest_message_age_seconds:g}"
            ),
            for_=s.oldest_message_for,
            severity="critical",
            summary="Messages in queue {{ $labels.queue_name }} wait longer than the SLO.",
            description=(
                "The oldest message in queue {{ $labels.queue_name }} has waited "
                "{{ $value | humanizeDuration }}; the SLO is "
                f"{s.oldest_message_age_seconds:g}s."
            ),
        ),
        Alert(
            name="CeleryQueueNoConsumers",
            expr=f"{length} > 0\nand\n{q.one(q.sel('celery_active_consumer_count'))} == 0",
            for_=s.no_consumers_for,
            severity="critical",
            summary="Queue {{ $labels.queue_name }} has messages but no consumer.",
            description=(
                "Queue {{ $labels.queue_name }} holds {{ $value | humanize }} messages and no "
                "worker consumes it: nothing will drain it until a worker for this queue runs."
            ),
        ),
        Alert(
            name="CeleryQueueDrainTimeTooLong",
            expr=f"{q.sel(DRAIN_TIME)} > {s.drain_time_seconds:g}",
            for_=s.drain_time_for,
            severity="warning",
            summary="Queue {{ $labels.queue_name }} will not drain in time.",
            description=(
                "At the rate its workers started tasks over the last 5m, the backlog of queue "
                "{{ $labels.queue_name }} {{ if gt $value 1e+300 }}never drains: nothing "
                "consumed it{{ else }}takes {{ $value | humanizeDuration }} to drain{{ end }} "
                f"(threshold {s.drain_time_seconds:g}s). New tasks wait at least that long."
            ),
        ),
        Alert(
            name="CeleryQueueConsumersSaturated",
            expr=expr(
                f"""
                {q.sel(UTILISATION)} >= {s.saturation_ratio:g}
                and
                {q.one(f"deriv({q.sel('celery_queue_length')}[{s.saturation_window}])")} > 0
                and
                {length} > 0
                """
            ),
            for_=s.saturation_for,
            severity="warning",
            summary="The workers of queue {{ $labels.queue_name }} are saturated.",
            description=(
                "The workers consuming queue {{ $labels.queue_name }} use "
                "{{ $value | humanizePercentage }} of their pool slots (threshold "
                f"{pct(s.saturation_ratio)}) and its backlog grew over the last "
                f"{s.saturation_window}: only more workers or concurrency drain it."
            ),
        ),
        Alert(
            name="CeleryUnackedDeliveryStale",
            expr=expr(
                f"""
                {q.one(q.sel("celery_broker_unacked_oldest_age_seconds"))}
                > {s.unacked_visibility_fraction:g}
                  * {q.one(q.sel("celery_broker_visibility_timeout_seconds"))}
                """
            ),
            for_=s.unacked_for,
            severity="warning",
            summary="An unacknowledged delivery is close to the visibility timeout.",
            description=(
                "The oldest unacknowledged delivery of {{ $labels.job }} is "
                "{{ $value | humanizeDuration }} old, over "
                f"{pct(s.unacked_visibility_fraction)} of visibility_timeout"
                "{{ with printf `max(celery_broker_visibility_timeout_seconds{job='%s'})` "
                "$labels.job | query }} ({{ . | first | value | humanizeDuration }})"
                "{{ end }}. At the timeout Redis redelivers it and the task runs twice."
            ),
        ),
    ]


def _worker_alerts(s: AlertSettings, q: PromQL) -> list[Alert]:
    return [
        Alert(
            # Only `lost`: a worker that said goodbye (offline: scale-down, deploy) never
            # alerts, and a `busy` one is working (CeleryTaskRunningTooLong watches that).
            name="CeleryWorkerDown",
            # busy alerts too: a worker that went silent mid-task may be dead with it (an
            # OOM kill of a threads pool); the state label says what the exporter saw.
            expr=q.worker_state("lost", "busy"),
            for_=s.worker_down_for,
            severity="warning",
            summary="Celery worker {{ $labels.hostname }} stopped heartbeating.",
            description=(
                "Worker {{ $labels.hostname }} stopped heartbeating without a worker-offline "
                "goodbye (killed, OOM, node lost)"
                "{{ with printf `time() - max(celery_worker_last_heartbeat_timestamp_seconds"
                "{hostname='%s'})` $labels.hostname | query }}; last heard "
                "{{ . | first | value | humanizeDuration }} ago{{ end }}."
                "{{ with printf `max(celery_worker_state{hostname='%s',state='busy'}) == 1` "
                "$labels.hostname | query }} It went silent while running a task it was seen "
                "to start (state busy): a threads or gevent pool whose task holds the loop "
                "stops heartbeating while it works.{{ end }}"
            ),
        ),
        Alert(
            # min: one replica with evidence of tasks without events is enough.
            name="CeleryWorkerTaskEventsMissing",
            expr=expr(
                f"""
                min without ({q.replicas}) ({q.sel("celery_worker_sends_task_events")}) == 0
                and
                {q.one(q.sel("celery_worker_up"))} == 1
                """
            ),
            for_=s.task_events_missing_for,
            severity="warning",
            summary="Worker {{ $labels.hostname }} sends no task events.",
            description=(
                "Worker {{ $labels.hostname }} heartbeats and processes tasks but no task "
                "events arrive from it (started without -E?): its tasks are invisible to "
                "every task metric."
            ),
        ),
    ]


def _exporter_availability(s: AlertSettings, q: PromQL) -> list[Alert]:
    """With replicas, one replica down is not blindness: it warns; all of them down pages."""
    up = q.sel("up", f'job="{s.exporter_job}"')
    return [
        Alert(
            name="CeleryExporterDown",
            expr=f"{q.one(up)} == 0\nor\nabsent({up})",
            for_=s.exporter_down_for,
            severity="critical",
            summary="The Celery exporter is down: every Celery alert is blind.",
            description=(
                "{{ if eq $value 0.0 }}Prometheus cannot scrape any target of "
                f'job="{s.exporter_job}"'
                # Sorted: a query's result order is not defined, and the text must not flap.
                "{{ with printf `up{job='%s'} == 0` $labels.job | query | sortByLabel "
                '"instance" }} ('
                "{{ range $i, $s := . }}{{ if $i }}, {{ end }}{{ $s.Labels.instance }}{{ end }})"
                "{{ end }}."
                f'{{{{ else }}}}Prometheus has no target of job="{s.exporter_job}" at all.'
                "{{ end }}"
            ),
        ),
        Alert(
            name="CeleryExporterReplicaDown",
            expr=f"{up} == 0\nand ignoring ({q.replicas})\n{q.one(up)} == 1",
            for_=s.exporter_replica_down_for,
            severity="warning",
            summary="One Celery exporter replica is down; the others still see everything.",
            description=(
                "Prometheus cannot scrape exporter {{ $labels.instance }} "
                f'(job="{s.exporter_job}") while another replica answers: the alerts still '
                "work, but one more failure blinds them."
            ),
        ),
    ]


def _exporter_alerts(s: AlertSettings, q: PromQL) -> list[Alert]:
    return [
        *_exporter_availability(s, q),
        Alert(
            name="CeleryBrokerUnreachable",
            expr=f"{q.sel('celery_exporter_broker_up')} == 0",
            for_=s.broker_down_for,
            severity="critical",
            summary="The Celery exporter cannot reach the broker.",
            description=(
                "Exporter {{ $labels.instance }} cannot reach the broker or lost its event "
                "subscription; workers likely cannot either."
            ),
        ),
        Alert(
            name="CeleryEventsNotArriving",
            expr=expr(
                f"""
                (
                  sum by (job, instance) (rate({q.sel("celery_exporter_events_total")}[{s.events_window}]))
                  or
                  sum by (job, instance) ({q.sel("celery_active_consumer_count")}) * 0
                ) == 0
                and on (job, instance)
                sum by (job, instance) ({q.sel("celery_active_consumer_count")}) > 0
                """  # noqa: E501 - PromQL reads best on one line here
            ),
            for_=s.events_for,
            severity="warning",
            summary="No Celery events arrive although workers consume the queues.",
            description=(
                "Exporter {{ $labels.instance }} received no event at all in the last "
                f"{s.events_window} while inspect sees consumers on its queues: the event "
                "subscription is broken or points at the wrong database or key prefix."
            ),
        ),
        Alert(
            name="CeleryExporterDroppingEvents",
            expr=(
                f"increase({q.sel('celery_exporter_events_dropped_total')}"
                f"[{s.events_dropped_window}]) > 0"
            ),
            for_=s.events_dropped_for,
            severity="warning",
            summary="The Celery exporter drops events: it cannot keep up.",
            description=(
                "Exporter {{ $labels.instance }} dropped {{ $value | humanize }} event messages "
                f"in the last {s.events_dropped_window} because its in-memory backlog was full."
            ),
        ),
        Alert(
            name="CeleryBrokerPollStale",
            expr=(
                f"{q.sel('celery_exporter_broker_poll_age_seconds')} "
                f"> {s.broker_poll_stale_seconds:g}"
            ),
            for_=s.broker_poll_stale_for,
            severity="warning",
            summary="Queue figures from the Celery exporter are stale.",
            description=(
                "Exporter {{ $labels.instance }} last polled the broker "
                "{{ $value | humanizeDuration }} ago (threshold "
                f"{s.broker_poll_stale_seconds:g}s): queue length, age and unacked figures "
                "are out of date."
            ),
        ),
    ]


def alerts(settings: AlertSettings) -> list[Alert]:
    """Every alerting rule, in the order of the generated file."""
    q = PromQL(settings)
    return [
        *_task_alerts(settings, q),
        *_queue_alerts(settings, q),
        *_worker_alerts(settings, q),
        *_exporter_alerts(settings, q),
        *slo.burn_alerts(settings),
    ]


def alert_names(settings: AlertSettings) -> list[str]:
    """Each alert name once (several rules may share one), in file order."""
    return list(dict.fromkeys(alert.name for alert in alerts(settings)))


def rule_groups(settings: AlertSettings) -> dict[str, Any]:
    """The whole rules file: recording, SLO (short and long windows) and alerting groups."""
    interval = {"interval": settings.evaluation_interval} if settings.evaluation_interval else {}
    slo_short, slo_long = slo.recording_groups(settings)
    groups = [{"name": RECORDING_GROUP, **interval, "rules": recording_rules(settings)}]
    if slo_short:
        groups.append({"name": slo.SLO_GROUP, **interval, "rules": slo_short})
        groups.append(
            {"name": slo.SLO_LONG_GROUP, "interval": settings.slo_long_interval, "rules": slo_long}
        )
    groups.append(
        {
            "name": ALERTING_GROUP,
            **interval,
            "rules": [alert.to_rule(settings.runbook_base_url) for alert in alerts(settings)],
        }
    )
    return {"groups": groups}
