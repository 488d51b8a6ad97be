"""Bounds that hold against churn and nonsense: producers apart from workers, the series
budget, absurd field values, and caps that free their slots."""

from __future__ import annotations

import math

import pytest

import exporter.state
from exporter.labels import OTHER, LabelGuard
from exporter.state import GENERIC, Options, State
from tests.test_exporter_inflight import T0, ev, heartbeat, received, run, sent


@pytest.fixture
def no_task_sent(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Producers that send no task-sent events: a task-received is counted at once."""
    monkeypatch.setattr(exporter.state, "PENDING_PROBE", 0)


def test_producer_churn_never_hides_a_new_worker() -> None:
    state = State(Options(max_hostnames=5, max_producers=5))
    for i in range(50):  # web pods come and go, each with its own hostname
        run(state, ev("task-sent", f"s{i}", f"gen{i}@web-{i}", name="t", queue="q"))
    run(state, heartbeat("new@worker"), sent("u"), received("u", "new@worker"))
    assert "new@worker" in state.workers
    assert state.counters["task-received"][("t", "new@worker", "q")] == 1
    assert state.snapshot().overflow["producer"] == 51 - 5  # 50 web pods and "p", cap 5
    assert state.snapshot().overflow["hostname"] == 0


def test_producers_age_out_and_free_their_slots() -> None:
    state = State(Options(max_producers=1, producer_forget_after=60.0))
    run(state, ev("task-sent", "a", "gen1@web-1", name="t", queue="q"))
    assert state.forget_producers(now=T0 + 30) == []
    assert state.forget_producers(now=T0 + 61) == ["web-1"]
    assert not any(key[1] == "web-1" for key in state.counters["task-sent"])
    run(state, ev("task-sent", "b", "gen2@web-2", name="t", queue="q"), at=T0 + 62)
    assert state.counters["task-sent"][("t", "web-2", "q")] == 1  # the slot was free


def test_a_full_worker_table_makes_room_by_dropping_the_longest_departed() -> None:
    state = State(Options(max_hostnames=2))
    run(state, heartbeat("a@h"), heartbeat("b@h"))
    run(state, heartbeat("a@h", kind="worker-offline"), at=T0 + 1)
    run(state, heartbeat("c@h"), at=T0 + 2)
    assert set(state.workers) == {"b@h", "c@h"}


def test_generic_hostname_flags_use_one_label() -> None:
    state = State(Options(generic_hostname_task_sent=True, generic_hostname_worker_task=True))
    run(state, heartbeat(), sent("a"), received("a"))
    assert state.counters["task-sent"][("t", GENERIC, "q")] == 1
    assert state.counters["task-received"][("t", GENERIC, "q")] == 1
    assert "w@h" in state.workers  # the worker's own gauges keep its name


def test_default_queue_name_labels_tasks_of_unknown_queue(no_task_sent) -> None:  # type: ignore[no-untyped-def]
    state = run(State(Options(default_queue_name="celery")), received("a"))
    assert state.counters["task-received"] == {("t", "w@h", "celery"): 1}


def test_the_series_budget_bounds_the_product_of_the_label_caps(no_task_sent) -> None:  # type: ignore[no-untyped-def]
    state = State(Options(max_series=2_000))
    cost = state.series.key_cost
    for name in range(20):
        for host in range(20):
            uuid = f"{name}-{host}"
            run(state, ev("task-received", uuid, f"w{host}@h", name=f"task{name}", retries=0))
    known = [key for key in state.counters["task-received"] if key != (OTHER, OTHER, OTHER)]
    assert len(known) == 2_000 // cost
    assert state.counters["task-received"][(OTHER, OTHER, OTHER)] == 400 - len(known)
    assert state.snapshot().overflow["series"] == 400 - len(known)


def test_a_timestamp_years_ahead_is_clamped_and_does_not_pin_the_lag() -> None:
    state = run(State(), heartbeat(ts=T0 + 10 * 365 * 86400))
    assert state.newest_event == T0
    assert state.invalid_fields == {"timestamp": 1}


def test_nan_timestamps_are_rejected() -> None:
    state = run(State(), heartbeat(ts=math.nan), heartbeat(ts=math.inf))
    assert state.rejected == {"invalid_timestamp": 2}


def test_absurd_heartbeat_fields_are_ignored_and_counted() -> None:
    state = run(State(), heartbeat())
    run(state, ev("worker-heartbeat", ts=T0 + 1, freq=1e18, active=-5, processed=3), at=T0 + 1)
    worker = state.workers["w@h"]
    assert (worker.freq, worker.active, worker.processed) == (2.0, 0, 3)
    assert state.invalid_fields == {"freq": 1, "active": 1}
    assert state.snapshot(now=T0 + 8).worker_states == {"w@h": "lost"}  # not kept up


def test_a_huge_runtime_is_counted_but_not_observed() -> None:
    state = run(State(), sent("a"), received("a"), ev("task-succeeded", "a", runtime=1e300))
    assert state.counters["task-succeeded"][("t", "w@h", "q")] == 1
    assert ("t", "w@h", "q") not in state.runtime
    assert state.invalid_fields == {"runtime": 1}


def test_forgetting_a_cleaned_label_frees_its_cap_slot() -> None:
    guard = LabelGuard("hostname", cap=1, max_length=8)
    raw = "w\x00rker@a-very-long-host"
    label = guard.get(raw)
    assert label != raw and guard.get("other@h") == OTHER
    guard.forget(label)
    assert guard.get("other@h") == "other@h"


def test_a_forgotten_worker_frees_its_slot_for_a_new_one() -> None:
    state = State(Options(max_hostnames=1, worker_forget_after=10.0))
    run(state, heartbeat("w\x01@h"))
    state.forget_workers(now=T0 + 11)
    run(state, heartbeat("fresh@h"), at=T0 + 12)
    assert "fresh@h" in state.workers
