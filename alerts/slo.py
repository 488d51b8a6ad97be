"""Per-queue SLOs: error ratios over every window, error budget left, burn-rate alerts.

Two service level indicators per queue, from ``queue_slos`` in alerts/settings.py:

- ``queue_wait``: a task started within ``wait_seconds`` of being sent (or of its ETA), read
  from the ``celery_task_queue_wait_time`` bucket whose bound is ``wait_seconds``. A task
  still waiting is not counted until it starts; CeleryQueueDrainTimeTooLong and
  CeleryQueueOldestMessageTooOld watch the tasks that have not started yet.
- ``success``: a finished run succeeded, succeeded / (succeeded + failed). Retries are not
  failures; a run that fails for good is.

The error ratio (bad / all) is recorded for every window the alerts use, deduplicated across
exporter replicas. The burn rate is the error ratio divided by the error budget (1 -
objective): at 1 the budget lasts exactly ``slo_period``. The alerts are the SRE workbook's
multi-window, multi-burn-rate pairs: a long window shows the burn is significant, a short one
that it is still happening, so an alert stops soon after the burn does.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from alerts.alert import Alert, pct
from alerts.promql import PromQL, block, one_of
from alerts.settings import AlertSettings, QueueSLO, duration_seconds, le_label

SLO_GROUP = "celery-observatory.slo"
SLO_LONG_GROUP = "celery-observatory.slo-long"
ERRORS_PERIOD = "queue_name_slo:celery_slo_errors:ratio_period"
BUDGET_LEFT = "queue_name_slo:celery_slo_error_budget:remaining"
FAST_BURN = "CeleryErrorBudgetBurnFast"
SLOW_BURN = "CeleryErrorBudgetBurnSlow"
WAIT = "queue_wait"
SUCCESS = "success"


def errors_record(window: str) -> str:
    """The error ratio over ``window``: ``queue_name_slo:celery_slo_errors:ratio_rate1h``."""
    return f"queue_name_slo:celery_slo_errors:ratio_rate{window}"


def events_record(window: str) -> str:
    """The SLI's events over ``window``: ``queue_name_slo:celery_slo_events:increase1h``."""
    return f"queue_name_slo:celery_slo_events:increase{window}"


@dataclasses.dataclass(frozen=True)
class BurnWindows:
    """Alert when both windows burn faster than the rate that spends ``budget_spent`` of the
    period's budget within ``long``."""

    long: str
    short: str
    budget_spent: float

    def burn_rate(self, period: str) -> float:
        # The workbook's 14.4x, 6x, 3x and 1x for a 30-day period; other periods scale.
        return round(self.budget_spent * duration_seconds(period) / duration_seconds(self.long), 6)


PAGE = (BurnWindows("1h", "5m", 0.02), BurnWindows("6h", "30m", 0.05))
TICKET = (BurnWindows("1d", "2h", 0.10), BurnWindows("3d", "6h", 0.10))
# Windows recorded at the global evaluation interval, and the costly long ones recorded every
# slo_long_interval (which only the tickets and the budget read).
SHORT_WINDOWS = ("5m", "30m", "1h", "6h")
LONG_WINDOWS = ("2h", "1d", "3d")


def _grouped(
    settings: AlertSettings, key: Callable[[QueueSLO], float | None]
) -> list[tuple[float, list[str]]]:
    """Queues with the same ``key`` (threshold, objective) share one rule; ``None`` skips."""
    groups: dict[float, list[str]] = defaultdict(list)
    for queue, slo in settings.queue_slos.items():
        value = key(slo)
        if value is not None:
            groups[value].append(queue)
    return sorted(groups.items())


def _wait_errors(q: PromQL, queues: list[str], bound: float, window: str) -> str:
    queue = one_of("queue_name", queues)
    within = q.sum_rate(
        "celery_task_queue_wait_time_bucket", window, "hostname, name, le", queue,
        f'le="{le_label(bound)}"',
    )  # fmt: skip
    total = q.sum_rate("celery_task_queue_wait_time_count", window, "hostname, name", queue)
    return block("1 -", f"{within}\n/\n{total}")


def _success_errors(q: PromQL, queues: list[str], window: str) -> str:
    queue = one_of("queue_name", queues)
    failed = q.sum_rate("celery_task_failed_total", window, "hostname, name, exception", queue)
    succeeded = q.sum_rate("celery_task_succeeded_total", window, "hostname, name", queue)
    return f"{failed}\n/\n" + block("", f"{failed}\n+\n{succeeded}").lstrip()


def _wait_events(q: PromQL, queues: list[str], window: str) -> str:
    queue = one_of("queue_name", queues)
    return q.sum_increase("celery_task_queue_wait_time_count", window, "hostname, name", queue)


def _success_events(q: PromQL, queues: list[str], window: str) -> str:
    queue = one_of("queue_name", queues)
    failed = q.sum_increase("celery_task_failed_total", window, "hostname, name, exception", queue)
    succeeded = q.sum_increase("celery_task_succeeded_total", window, "hostname, name", queue)
    return f"{failed}\n+\n{succeeded}"


def _event_rules(q: PromQL, settings: AlertSettings, window: str) -> list[dict]:
    """How many events each SLI counted over ``window``: the burn alerts' volume guard."""
    if settings.slo_min_events <= 0:
        return []
    slos = settings.queue_slos.items()
    kinds = (
        (WAIT, _wait_events, [name for name, slo in slos if slo.wait_objective]),
        (SUCCESS, _success_events, [name for name, slo in slos if slo.success_objective]),
    )
    record = events_record(window)
    return [
        {"record": record, "expr": events(q, queues, window), "labels": {"slo": kind}}
        for kind, events, queues in kinds
        if queues
    ]


def _union(parts: list[str]) -> str:
    """Several per-group expressions as one (``or``): their queue_name sets are disjoint, and
    one rule per record name keeps promtool's duplicate-rule lint quiet."""
    return "\nor\n".join(f"(\n{textwrap.indent(part, '  ')}\n)" for part in parts)


def _error_rules(q: PromQL, settings: AlertSettings, record: str, window: str) -> list[dict]:
    rules = []
    waiting = _grouped(settings, lambda slo: slo.wait_seconds)
    if waiting:
        parts = [_wait_errors(q, queues, bound, window) for bound, queues in waiting]
        rules.append({"record": record, "expr": _union(parts), "labels": {"slo": WAIT}})
    succeeding = [name for name, slo in settings.queue_slos.items() if slo.success_objective]
    if succeeding:
        rules.append(
            {
                "record": record,
                "expr": _success_errors(q, succeeding, window),
                "labels": {"slo": SUCCESS},
            }
        )
    return rules


def _budget(objective: float) -> str:
    return f"{round(1 - objective, 10):g}"


def _objectives(settings: AlertSettings) -> list[tuple[str, float, list[str]]]:
    """(slo, objective, queues) for every group of queues sharing an objective."""
    return [
        (kind, objective, queues)
        for kind, key in ((WAIT, _wait_objective), (SUCCESS, _success_objective))
        for objective, queues in _grouped(settings, key)
    ]


def _wait_objective(slo: QueueSLO) -> float | None:
    return slo.wait_objective


def _success_objective(slo: QueueSLO) -> float | None:
    return slo.success_objective


def _budget_rules(q: PromQL, settings: AlertSettings) -> list[dict[str, Any]]:
    """1 - (error ratio over the period / budget): 1 untouched, 0 spent, below 0 overspent."""
    parts = [
        f"1 - {q.sel(ERRORS_PERIOD, one_of('slo', [kind]), one_of('queue_name', queues))}"
        f" / {_budget(objective)}"
        for kind, objective, queues in _objectives(settings)
    ]
    return [{"record": BUDGET_LEFT, "expr": _union(parts)}] if parts else []


def recording_groups(settings: AlertSettings) -> tuple[list[dict], list[dict]]:
    """(rules evaluated at the global interval, rules evaluated every slo_long_interval)."""
    q = PromQL(settings)
    short = [r for w in SHORT_WINDOWS for r in _error_rules(q, settings, errors_record(w), w)]
    short += [r for pair in PAGE for r in _event_rules(q, settings, pair.long)]
    long = [r for w in LONG_WINDOWS for r in _error_rules(q, settings, errors_record(w), w)]
    long += [r for pair in TICKET for r in _event_rules(q, settings, pair.long)]
    long += _error_rules(q, settings, ERRORS_PERIOD, settings.slo_period)
    long += _budget_rules(q, settings)
    return short, long


def _burn_expr(q: PromQL, settings: AlertSettings, windows: tuple[BurnWindows, ...]) -> str:
    """The long window's burn rate, where both windows of a pair exceed the pair's rate."""
    groups = []
    for kind, objective, queues in _objectives(settings):
        matchers = (f'slo="{kind}"', one_of("queue_name", queues))
        pairs = []
        for pair in windows:
            rate = f"{pair.burn_rate(settings.slo_period):g}"
            burning = [
                f"{q.sel(errors_record(window), *matchers)} / {_budget(objective)} > {rate}"
                for window in (pair.long, pair.short)
            ]
            if settings.slo_min_events > 0:  # enough events that a ratio means something
                guard = q.sel(events_record(pair.long), *matchers)
                burning[0] = f"{burning[0]}\nand\n{guard} >= {settings.slo_min_events}"
            pairs.append("\nand\n".join(burning))
        groups.append(_union(pairs))
    return _union(groups)


def _windows_text(settings: AlertSettings, windows: tuple[BurnWindows, ...]) -> str:
    return " or ".join(
        f"{pair.long} and {pair.short} above {pair.burn_rate(settings.slo_period):g}x"
        for pair in windows
    )


def _objective_text(settings: AlertSettings) -> str:
    """A template that states the objective of the alert's queue and SLI."""
    chain = []
    for queue, spec in settings.queue_slos.items():
        for kind, objective in ((WAIT, spec.wait_objective), (SUCCESS, spec.success_objective)):
            if objective is None:
                continue
            if kind == WAIT:
                text = f"{pct(objective)} of tasks start within {spec.wait_seconds:g}s"
            else:
                text = f"{pct(objective)} of finished runs succeed"
            keyword = "if" if not chain else "else if"
            chain.append(
                f'{{{{ {keyword} and (eq $labels.queue_name "{queue}") '
                f'(eq $labels.slo "{kind}") }}}}{text}'
            )
    return "".join(chain) + "{{ end }}"


def _burn_alert(settings: AlertSettings, page: bool) -> Alert:
    windows = PAGE if page else TICKET
    urgency = (
        "At this pace the whole budget is gone in days: act now."
        if page
        else "Not urgent, but the budget will not last the period: plan a fix."
    )
    return Alert(
        name=FAST_BURN if page else SLOW_BURN,
        expr=_burn_expr(PromQL(settings), settings, windows),
        for_=settings.slo_page_for if page else settings.slo_ticket_for,
        severity="critical" if page else "warning",
        summary="Queue {{ $labels.queue_name }} burns its {{ $labels.slo }} error budget too fast.",
        description=(
            "Queue {{ $labels.queue_name }} spends its {{ $labels.slo }} error budget "
            '{{ printf "%.1f" $value }}x as fast as its objective allows ('
            f"{_objective_text(settings)} over {settings.slo_period}): "
            f"{_windows_text(settings, windows)}. {urgency}"
        ),
    )


def burn_alerts(settings: AlertSettings) -> list[Alert]:
    """A page (fast burn) and a ticket (slow burn) over every queue with an objective."""
    if not settings.queue_slos:
        return []
    return [_burn_alert(settings, page=True), _burn_alert(settings, page=False)]
