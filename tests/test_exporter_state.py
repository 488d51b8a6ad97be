"""The state applied to real Celery 5.7 events (tests/corpus): exact counts, bounds, liveness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.decode import decode_envelope
from exporter.labels import OTHER
from exporter.state import Options, State, exception_class, producer_host
from exporter.taskindex import TaskIndex

CORPUS = Path(__file__).parent / "corpus" / "celery-5.7-events.jsonl"
WORKER = "w1@vm"
CORPUS_END = 1795524364.0  # just after the last event of the corpus (its worker-offline)


def corpus_state(options: Options | None = None) -> State:
    state = State(options)
    for line in CORPUS.read_text().splitlines():
        state.apply(decode_envelope(json.loads(line)["data"]), received=CORPUS_END)
    return state


def test_corpus_counts_match_what_the_worker_did() -> None:
    # The corpus README: three tasks succeed, one raises ValueError, one retries once and
    # then fails with KeyError; the producer's host is "vm".
    state = corpus_state()
    c = state.counters
    ok, boom, retry = (
        ("capapp.ok", WORKER, "celery"),
        ("capapp.boom", WORKER, "celery"),
        ("capapp.retry", WORKER, "celery"),
    )
    assert c["task-sent"] == {
        ("capapp.ok", "vm", "celery"): 3,
        ("capapp.boom", "vm", "celery"): 1,
        ("capapp.retry", "vm", "celery"): 2,  # the retry is a new message
        # The worker's label sets appear at 0 here too, as the peer exporter serves them.
        ok: 0,
        boom: 0,
        retry: 0,
    }
    assert (c["task-received"][ok], c["task-received"][boom], c["task-received"][retry]) == (
        3,
        1,
        2,
    )
    assert (c["task-started"][ok], c["task-started"][boom], c["task-started"][retry]) == (3, 1, 2)
    assert (c["task-succeeded"][ok], c["task-succeeded"][boom]) == (3, 0)
    assert c["task-retried"][retry] == 1
    assert state.failed[(*boom, "ValueError")] == 1
    assert state.failed[(*retry, "KeyError")] == 1
    assert state.failed[(*ok, "")] == 0  # known label sets appear at 0, like the peer exporter
    assert state.processed == {ok: 3, boom: 1, retry: 1}
    assert sum(state.runtime[ok].counts) == 3
    assert sum(state.runtime[retry].counts) == 1  # started -> failed of the last attempt
    assert sum(state.queue_wait[retry].counts) == 2  # one wait per attempt
    assert len(state.index) == 0  # every task finished, nothing left in flight
    assert state.rejected == {}


def test_every_served_task_series_has_its_created_time() -> None:
    # prometheus_client (the peer) serves _created for each counter series, the zero ones
    # too: task_failed{exception=""} included.
    state = corpus_state()
    for counter in state.counters.values():
        assert set(counter) <= set(state.created)


def test_worker_goes_down_on_offline_and_on_silence() -> None:
    state = corpus_state()
    worker = state.workers[WORKER]
    assert worker.processed == 6
    assert state.worker_states(now=CORPUS_END)[WORKER] == "offline"  # it said goodbye

    state.apply(
        [
            {
                "type": "worker-heartbeat",
                "hostname": WORKER,
                "timestamp": 1.0,
                "freq": 2.0,
                "active": 1,
                "processed": 7,
            }
        ],
        received=2000.0,
    )
    worker = state.workers[WORKER]
    assert state.worker_states(now=2005.9)[WORKER] == "online"  # within 3 heartbeat intervals
    assert state.worker_states(now=2006.1)[WORKER] == "lost"


def test_forgotten_worker_takes_its_series_with_it() -> None:
    state = corpus_state(Options(worker_forget_after=100.0))
    assert state.forget_workers(now=CORPUS_END + 50.0) == []
    assert state.forget_workers(now=CORPUS_END + 101.0) == [WORKER]
    assert WORKER not in state.workers
    assert all(key[1] != WORKER for key in state.counters["task-started"])
    assert "vm" in {key[1] for key in state.counters["task-sent"]}  # producers stay


def test_task_index_never_exceeds_its_cap_and_counts_evictions() -> None:
    cap = 1000
    index = TaskIndex(cap)
    for i in range(10 * cap):
        index.sent(f"task-{i}", "n", "q", float(i), float(i))
        assert len(index) <= cap
    assert len(index) == cap
    assert index.evicted == 9 * cap
    assert index.sent_time(f"task-{10 * cap - 1}") == float(10 * cap - 1)
    assert index.sent_time("task-0") is None  # oldest evicted first


def test_finished_tasks_leave_the_index_and_free_slots_are_reused_without_eviction() -> None:
    index = TaskIndex(10)
    for i in range(100):
        index.sent(f"t{i}", "n", "q", 0.0, 0.0)
        index.finish(f"t{i}", "task-succeeded")
    assert len(index) == 0
    assert index.evicted == 0


def test_label_caps_fold_into_other_and_count() -> None:
    state = State(Options(max_task_names=3))
    for i in range(10):
        state.apply(
            [
                {
                    "type": "task-sent",
                    "hostname": "gen1@h",
                    "timestamp": 1.0,
                    "uuid": f"u{i}",
                    "name": f"task{i}",
                    "queue": "q",
                }
            ],
            received=1.0,
        )
    names = {key[0] for key in state.counters["task-sent"]}
    assert names == {"task0", "task1", "task2", OTHER}
    assert state.counters["task-sent"][(OTHER, "h", "q")] == 7
    assert state.names.overflow == 7


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("not a dict", "invalid_not_an_object"),
        ({"type": "task-exploded", "hostname": "h", "timestamp": 1.0}, "unknown_type"),
        ({"type": "task-started", "timestamp": 1.0, "uuid": "u"}, "invalid_hostname"),
        (
            {"type": "task-started", "hostname": "h", "timestamp": "soon", "uuid": "u"},
            "invalid_timestamp",
        ),
        ({"type": "task-started", "hostname": "h", "timestamp": 1.0, "uuid": 42}, "invalid_uuid"),
        ({"type": "task-sent", "hostname": "h", "timestamp": 1.0, "uuid": "u"}, "invalid_name"),
        (
            {
                "type": "task-succeeded",
                "hostname": "h",
                "timestamp": 1.0,
                "uuid": "u",
                "runtime": "fast",
            },
            "invalid_runtime",
        ),
        (
            {
                "type": "task-sent",
                "hostname": "h",
                "timestamp": 1.0,
                "uuid": "u",
                "name": "n",
                "eta": "tomorrow",
            },
            "invalid_eta",
        ),
    ],
)
def test_bad_events_are_rejected_by_reason_and_valid_neighbours_still_count(
    event: object, reason: str
) -> None:
    state = State()
    good = {"type": "worker-heartbeat", "hostname": "w@h", "timestamp": 1.0, "processed": 1}
    state.apply([good, event, good], received=1.0)
    assert state.rejected == {reason: 1}
    assert state.events["worker-heartbeat"] == 2


def test_queue_wait_ignores_countdown_and_eta() -> None:
    state = State()
    eta = "2030-01-01T00:00:10+00:00"
    eta_ts = 1893456010.0
    state.apply(
        [
            {
                "type": "task-sent",
                "hostname": "gen1@h",
                "timestamp": eta_ts - 3600,
                "uuid": "u",
                "name": "n",
                "queue": "q",
                "eta": eta,
            },
            {"type": "task-started", "hostname": "w@h", "timestamp": eta_ts + 2.0, "uuid": "u"},
        ],
        received=eta_ts + 3.0,
    )
    hist = state.queue_wait[("n", "w@h", "q")]
    assert hist.sum == pytest.approx(2.0)  # not the hour the eta made it wait


def test_helpers() -> None:
    assert exception_class("ValueError('x')") == "ValueError"
    assert exception_class("requests.exceptions.HTTPError('500')") == "HTTPError"
    assert exception_class(None) == "UnknownException"
    assert producer_host("gen1234@web-1") == "web-1"
    assert producer_host("cpu@host-1") == "cpu@host-1"
    assert producer_host("general@host") == "general@host"


def _event(kind: str, uuid: str, host: str = "w@h", **fields: object) -> dict:
    return {"type": kind, "hostname": host, "timestamp": 1.0, "uuid": uuid, **fields}


def test_a_received_event_racing_ahead_of_task_sent_keeps_the_worker_queue() -> None:
    state = State()
    state.apply(
        [
            _event("task-sent", "a", "gen1@p", name="t", queue="q"),
            _event("task-received", "a", name="t"),
        ],
        received=1.0,
    )
    # The worker's task-received can beat the producer's task-sent (two publishers).
    state.apply(
        [
            _event("task-received", "b", name="t"),
            _event("task-sent", "b", "gen1@p", name="t", queue="q"),
        ],
        received=1.0,
    )
    assert state.counters["task-received"] == {("t", "w@h", "q"): 2}


def test_a_worker_serving_several_queues_is_never_guessed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import exporter.state as state_module

    monkeypatch.setattr(state_module, "PENDING_SECONDS", 0.0)
    state = State()
    for uuid, queue in (("a", "q1"), ("b", "q2")):
        state.apply(
            [
                _event("task-sent", uuid, "gen1@p", name="t", queue=queue),
                _event("task-received", uuid, name="t"),
            ],
            received=1.0,
        )
    state.apply([_event("task-received", "c", name="t")], received=1.0)
    state.flush_pending()  # its task-sent never comes
    assert state.counters["task-received"][("t", "w@h", "unknown")] == 1


def test_the_first_received_of_a_worker_waits_for_its_task_sent() -> None:
    state = State()
    state.apply([_event("task-sent", "a", "gen1@p", name="t", queue="q")], received=1.0)
    state.apply([_event("task-received", "b", "w2@h", name="t")], received=1.0)  # races ahead
    assert state.counters["task-received"] == {}  # waiting, not guessed
    state.apply([_event("task-sent", "b", "gen1@p", name="t", queue="q")], received=1.0)
    assert state.counters["task-received"] == {("t", "w2@h", "q"): 1}


def test_a_received_whose_sent_never_comes_is_counted_after_the_wait(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import exporter.state as state_module

    state = State()
    state.apply([_event("task-sent", "a", "gen1@p", name="t", queue="q")], received=1.0)
    monkeypatch.setattr(state_module, "PENDING_SECONDS", 0.0)
    state.apply([_event("task-received", "lost-sent", "w2@h", name="t")], received=1.0)
    state.flush_pending()
    assert state.counters["task-received"] == {("t", "w2@h", "unknown"): 1}


def test_a_later_event_counts_the_waiting_received_first() -> None:
    state = State()
    state.apply([_event("task-sent", "a", "gen1@p", name="t", queue="q")], received=1.0)
    state.apply(
        [_event("task-received", "b", "w2@h", name="t"), _event("task-started", "b", "w2@h")],
        received=1.0,
    )
    assert state.counters["task-received"][("t", "w2@h", "unknown")] == 1
    assert state.counters["task-started"][("t", "w2@h", "unknown")] == 1


def test_the_first_tasks_wait_for_their_task_sent_until_producers_prove_silent(
    monkeypatch,
) -> None:  # type: ignore[no-untyped-def]
    import exporter.state as state_module

    state = State()
    # A fresh exporter: the very first task-received races ahead of its task-sent.
    state.apply([_event("task-received", "a", name="t")], received=1.0)
    assert state.counters["task-received"] == {}
    state.apply([_event("task-sent", "a", "gen1@p", name="t", queue="q")], received=1.0)
    assert state.counters["task-received"] == {("t", "w@h", "q"): 1}

    # Producers without task_send_sent_event: after PENDING_PROBE waits in vain, no more.
    silent = State()
    monkeypatch.setattr(state_module, "PENDING_SECONDS", 0.0)
    for i in range(state_module.PENDING_PROBE):
        silent.apply([_event("task-received", f"u{i}", "w2@h", name="t")], received=1.0)
        silent.flush_pending()
    silent.apply([_event("task-received", "late", "w3@h", name="t")], received=1.0)
    assert silent.counters["task-received"][("t", "w3@h", "unknown")] == 1  # counted at once
