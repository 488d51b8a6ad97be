"""Tasks in flight, unit by unit: lost, redelivered, oldest running, scheduled, last sent,
and one final state per task. Events are shaped like Celery 5.7's (tests/corpus)."""

from __future__ import annotations

from typing import Any

from exporter.state import TASK_LOST, TASK_REDELIVERED, Options, State
from exporter.workers import Pool

T0 = 1_800_000_000.0
W = "w@h"
KEY = ("t", W, "q")


def ev(kind: str, uuid: str = "", host: str = W, ts: float = T0, **fields: Any) -> dict:
    event = {"type": kind, "hostname": host, "timestamp": ts, **fields}
    if uuid:
        event["uuid"] = uuid
    return event


def heartbeat(host: str = W, ts: float = T0, kind: str = "worker-heartbeat") -> dict:
    return ev(kind, host=host, ts=ts, freq=2.0, active=0, processed=0)


def sent(uuid: str, ts: float = T0, **fields: Any) -> dict:
    return ev("task-sent", uuid, "gen1@p", ts, name="t", queue="q", retries=0, **fields)


def received(uuid: str, host: str = W, ts: float = T0, retries: int = 0, **fields: Any) -> dict:
    return ev("task-received", uuid, host, ts, name="t", retries=retries, **fields)


def run(state: State, *events: dict, at: float = T0) -> State:
    state.apply(list(events), received=at)
    return state


def test_a_killed_worker_loses_what_it_held_once_by_name() -> None:
    state = run(
        State(),
        heartbeat(),
        sent("a"), received("a"), ev("task-started", "a"),  # running
        sent("b"), received("b"),  # reserved, not started
        sent("c"), received("c"), ev("task-started", "c"), ev("task-succeeded", "c", runtime=1.0),
    )  # fmt: skip
    assert state.snapshot().oldest_running == {("t", "q"): T0}
    state.check_workers(now=T0 + 5.0)  # within 3 heartbeat intervals: still online
    assert state.counters[TASK_LOST][KEY] == 0
    state.check_workers(now=T0 + 7.0)  # heartbeats stopped: lost, with a and b
    assert state.counters[TASK_LOST][KEY] == 2
    assert state.snapshot().oldest_running == {}
    state.check_workers(now=T0 + 60.0)
    assert state.counters[TASK_LOST][KEY] == 2  # once


def test_a_warm_shutdown_hands_reserved_tasks_back_and_loses_only_unfinished_starts() -> None:
    state = run(
        State(),
        heartbeat(),
        sent("a"), received("a"), ev("task-started", "a"),
        sent("b"), received("b"),
        heartbeat(kind="worker-offline"),
    )  # fmt: skip
    state.check_workers(now=T0 + 1.0)  # its buffered task events may still be on the way
    assert state.counters[TASK_LOST][KEY] == 0
    state.check_workers(now=T0 + 6.0)
    assert state.counters[TASK_LOST][KEY] == 1
    state.check_workers(now=T0 + 60.0)  # offline is a departure, not a loss
    assert state.counters[TASK_LOST][KEY] == 1


def test_a_task_finishing_just_after_its_worker_said_goodbye_is_not_lost() -> None:
    state = run(State(), heartbeat(), sent("a"), received("a"), ev("task-started", "a"))
    run(state, heartbeat(kind="worker-offline", ts=T0 + 1), at=T0 + 1)
    run(state, ev("task-succeeded", "a", ts=T0 + 1, runtime=1.0), at=T0 + 1.2)
    state.check_workers(now=T0 + 10.0)
    assert state.counters[TASK_LOST][KEY] == 0


def test_a_restarted_worker_held_nothing_what_it_held_before_is_lost() -> None:
    state = run(State(), heartbeat(), sent("a"), received("a"), ev("task-started", "a"))
    run(state, heartbeat(kind="worker-online", ts=T0 + 1), at=T0 + 1)
    assert state.counters[TASK_LOST][KEY] == 1


def test_a_second_delivery_of_the_same_attempt_is_a_redelivery_a_retry_is_not() -> None:
    state = run(State(), heartbeat(), sent("a"), received("a"), ev("task-started", "a"))
    run(state, received("a", "w2@h"))  # visibility timeout: delivered again
    assert state.counters[TASK_REDELIVERED][("t", "w2@h", "q")] == 1
    assert state.snapshot().oldest_running == {}  # no longer running where it was
    run(state, ev("task-retried", "a", "w2@h"), sent("a"), received("a", "w2@h", retries=1))
    assert state.counters[TASK_REDELIVERED][("t", "w2@h", "q")] == 1
    assert state.counters["task-received"][("t", "w2@h", "q")] == 2


def test_a_requeueing_reject_is_not_a_redelivery() -> None:
    state = run(State(), sent("a"), received("a"), ev("task-rejected", "a", requeue=True))
    run(state, received("a"))
    assert state.counters[TASK_REDELIVERED][KEY] == 0
    assert state.counters["task-rejected"][KEY] == 1


def test_a_finished_task_delivered_again_is_redelivered_and_its_second_run_counts() -> None:
    state = run(
        State(),
        sent("a"), received("a"), ev("task-started", "a"), ev("task-succeeded", "a", runtime=1.0),
        received("a"), ev("task-started", "a"), ev("task-succeeded", "a", runtime=1.0),
    )  # fmt: skip
    assert state.counters[TASK_REDELIVERED][KEY] == 1
    assert state.counters["task-succeeded"][KEY] == 2  # it really ran twice
    assert state.rejected == {}


def test_two_task_failed_for_one_task_count_once() -> None:
    # Celery sends task-failed twice when a hard time limit kills the task.
    failed = ev("task-failed", "a", exception="TimeLimitExceeded(60)")
    state = run(State(), sent("a"), received("a"), ev("task-started", "a"), failed, failed)
    assert state.failed[(*KEY, "TimeLimitExceeded")] == 1
    assert state.processed[KEY] == 1
    assert state.rejected == {"duplicate_final_state": 1}
    assert state.events["task-failed"] == 1


def test_reject_after_failed_still_counts_both_as_celery_sends_them() -> None:
    state = run(
        State(),
        sent("a"), received("a"), ev("task-started", "a"),
        ev("task-failed", "a", exception="reject requeue=False: no"),
        ev("task-rejected", "a", requeue=False),
    )  # fmt: skip
    assert state.failed[(*KEY, "Reject")] == 1
    assert state.counters["task-rejected"][KEY] == 1


def test_oldest_running_follows_the_oldest_unfinished_task() -> None:
    state = run(State(), sent("a"), received("a"), ev("task-started", "a"))
    run(state, sent("b"), received("b"), ev("task-started", "b"), at=T0 + 10)
    assert state.snapshot(now=T0 + 30).oldest_running == {("t", "q"): T0}
    run(state, ev("task-succeeded", "a", runtime=1.0), at=T0 + 31)
    assert state.snapshot().oldest_running == {("t", "q"): T0 + 10}
    run(state, ev("task-failed", "b", exception="ValueError()"), at=T0 + 32)
    assert state.snapshot().oldest_running == {}


def test_future_eta_tasks_are_scheduled_until_they_start_or_go() -> None:
    later = "2030-01-01T00:00:00+00:00"
    state = run(
        State(),
        sent("a", eta=later), received("a", eta=later),
        sent("b", eta=later), received("b", eta=later),
        sent("c"), received("c"),  # no ETA: not scheduled
    )  # fmt: skip
    assert state.snapshot().scheduled == {"q": 2}
    run(state, ev("task-started", "a"))
    run(state, ev("task-revoked", "b"))
    assert state.snapshot().scheduled == {}


def test_evicted_tasks_leave_the_running_and_scheduled_figures() -> None:
    later = "2030-01-01T00:00:00+00:00"
    state = State(Options(max_tracked_tasks=2))
    run(state, sent("a"), received("a"), ev("task-started", "a"), sent("b", eta=later))
    run(state, received("b", eta=later))
    assert state.snapshot().scheduled == {"q": 1} and state.snapshot().oldest_running
    run(state, sent("c"), sent("d"))  # evicts a and b
    snap = state.snapshot()
    assert snap.scheduled == {} and snap.oldest_running == {} and snap.evicted == 2


def test_last_sent_is_the_newest_send_per_name() -> None:
    state = run(State(), sent("a", ts=T0 + 5), sent("b", ts=T0 + 1))
    assert state.snapshot().last_sent == {"t": T0 + 5}


def test_a_silent_solo_worker_running_a_task_is_busy_not_lost() -> None:
    state = run(State(), heartbeat(), sent("a"), received("a"), ev("task-started", "a"))
    state.pools = {W: Pool("solo", 1)}
    state.check_workers(now=T0 + 30)
    assert state.snapshot(now=T0 + 30).worker_states == {W: "busy"}
    assert state.counters[TASK_LOST][KEY] == 0  # it is probably working
    run(state, ev("task-succeeded", "a", runtime=30.0), heartbeat(ts=T0 + 31), at=T0 + 31)
    assert state.snapshot(now=T0 + 31).worker_states == {W: "online"}
    # The same silence on a prefork worker (heartbeats come from the parent) is a loss.
    state.pools = {W: Pool("prefork", 4)}
    run(state, sent("b"), received("b"), ev("task-started", "b"), at=T0 + 32)
    state.check_workers(now=T0 + 60)
    assert state.snapshot(now=T0 + 60).worker_states == {W: "lost"}
    assert state.counters[TASK_LOST][KEY] == 1
