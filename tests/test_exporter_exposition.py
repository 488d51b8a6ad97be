"""The fast text renderer says exactly what prometheus_client would, and escapes hostile labels."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from exporter.collector import (
    ObservatoryCollector,
    SourceStatus,
    families,
    gather,
)
from exporter.decode import decode_envelope
from exporter.exposition import TextRenderer
from exporter.inspector import InspectView
from exporter.poller import BrokerView
from exporter.state import Options, State

CORPUS = Path(__file__).parent / "corpus" / "celery-5.7-events.jsonl"


def view_of(state: State):  # type: ignore[no-untyped-def]
    broker = BrokerView(
        up=True,
        polled_at=1.0,
        lengths={"celery": 3, "cpu": 0},
        oldest_age={"celery": 2.5, "cpu": 0.0},
        unacked=1,
        unacked_oldest_age=4.0,
    )
    inspect = InspectView(at=1.0, workers={"celery": 1}, processes={"celery": 4})
    view = gather(state, broker, inspect, SourceStatus(True, 0, 0), 3600.0, "0", "5")
    return lambda: view  # one instant, so time-based gauges agree between renderers


def corpus_state() -> State:
    state = State(Options(max_label_length=40))
    for line in CORPUS.read_text().splitlines():
        state.apply(decode_envelope(json.loads(line)["data"]), received=1.0)
    return state


def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_fast_text_equals_prometheus_client_rendering() -> None:
    state = corpus_state()
    # Hostile label values: quotes, backslashes, newlines, control characters, huge names.
    state.apply(
        [
            {
                "type": "task-sent",
                "hostname": 'gen1@we"b\\1',
                "timestamp": 1.0,
                "uuid": "u1",
                "name": 'evil"\n\\name\x00\x1b' + "x" * 500,
                "queue": "q\ttab",
            }
        ],
        received=1.0,
    )
    make_view = view_of(state)
    fast = TextRenderer().render(families(make_view()))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ObservatoryCollector(make_view))
    reference = generate_latest(registry).decode()
    assert parsed(fast) == parsed(reference)
    assert len(parsed(fast)) > 100


def test_every_contract_family_is_rendered_with_its_type() -> None:
    make_view = view_of(corpus_state())
    text = TextRenderer().render(families(make_view()))
    rendered = {f.name: f.type for f in text_string_to_metric_families(text)}
    for metric in metrics.ALL:
        if metric.name == "celery_exporter_event_lag_seconds":
            continue  # present once an event arrived: asserted below
        assert rendered.get(metric.family) == metric.kind, metric.name
    assert "celery_exporter_event_lag_seconds" in rendered


def test_hostile_label_values_are_cut_and_control_characters_spelled_out() -> None:
    state = State(Options(max_label_length=32))
    state.apply(
        [
            {
                "type": "task-sent",
                "hostname": "gen1@h",
                "timestamp": 1.0,
                "uuid": "u",
                "name": "a\x00b\x1b" + "n" * 100,
                "queue": "q",
            }
        ],
        received=1.0,
    )
    text = TextRenderer().render(families(view_of(state)()))
    line = next(ln for ln in text.splitlines() if ln.startswith("celery_task_sent_total{"))
    name = next(f for f in text_string_to_metric_families(text) if f.name == "celery_task_sent")
    value = name.samples[0].labels["name"]
    assert value.startswith("a\\x00b\\x1b")
    assert len(value) == 32 and value.endswith("…")
    assert "\x00" not in line and "\x1b" not in line
