"""The renderer says exactly what prometheus_client would, in text and OpenMetrics, with
--metric-prefix and --static-label, and escapes hostile labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest, openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from exporter.collector import (
    Exemplar,
    Family,
    ObservatoryCollector,
    SourceStatus,
    _client_family,
    families,
    gather,
)
from exporter.decode import decode_envelope
from exporter.exposition import OPENMETRICS, TEXT, Renderer, exposition, format_value
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


Parsed = dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, object]]


def parsed(text: str, fmt: str = TEXT) -> Parsed:
    """Every sample (``_created`` included) and its exemplar, by name and labels."""
    parse = om_families if fmt == OPENMETRICS else text_string_to_metric_families
    out: Parsed = {}
    for family in parse(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, key
            out[key] = (s.value, s.exemplar)
    return out


def metadata(text: str) -> dict[str, tuple[str, str, str]]:
    return {f.name: (f.type, f.unit, f.documentation) for f in om_families(text)}


def hostile_state() -> State:
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
    return state


def reference(make_view, fmt: str, prefix: str = "celery_", static=None) -> str:  # type: ignore[no-untyped-def]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ObservatoryCollector(make_view, prefix, static))
    if fmt == OPENMETRICS:
        return openmetrics.exposition.generate_latest(registry).decode()
    return generate_latest(registry).decode()


def ours(make_view, fmt: str, prefix: str = "celery_", static=None) -> str:  # type: ignore[no-untyped-def]
    return exposition(Renderer(prefix, static), families(make_view()), fmt, lambda _: "")


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
def test_the_renderer_equals_prometheus_client_in_both_formats(fmt: str) -> None:
    make_view = view_of(hostile_state())
    fast, slow = ours(make_view, fmt), reference(make_view, fmt)
    assert parsed(fast, fmt) == parsed(slow, fmt)
    created = [name for name, _ in parsed(fast, fmt) if name.endswith("_created")]
    assert len(created) > 20  # counters and histograms carry their creation time
    assert len(parsed(fast, fmt)) > 100
    if fmt == OPENMETRICS:
        assert metadata(fast) == metadata(slow)
        assert fast.endswith("# EOF\n")


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
def test_metric_prefix_and_static_labels_reach_every_family_of_ours(fmt: str) -> None:
    make_view = view_of(hostile_state())
    static = {"env": 'pr"od', "cluster": "eu-1"}
    fast = ours(make_view, fmt, "myapp_", static)
    assert parsed(fast, fmt) == parsed(reference(make_view, fmt, "myapp_", static), fmt)
    samples = parsed(fast, fmt)
    assert all(name.startswith("myapp_") for name, _ in samples)
    assert all(
        ("env", 'pr"od') in labels and ("cluster", "eu-1") in labels for _, labels in samples
    )
    assert "myapp_task_sent_total" in {name for name, _ in samples}


def test_openmetrics_spells_families_units_and_created_as_the_standard_says() -> None:
    text = ours(view_of(corpus_state()), OPENMETRICS)
    assert "# TYPE celery_task_sent counter\n" in text  # family named without _total
    assert "# UNIT celery_queue_oldest_message_age_seconds seconds\n" in text
    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("celery_task_sent_total{"))
    assert lines[first + 1].startswith("celery_task_sent_created{")  # with its label set
    assert lines.count("# EOF") == 1 and lines[-1] == "# EOF"
    # The text format keeps prometheus_client's spelling: _created as a gauge after the family.
    plain = ours(view_of(corpus_state()), TEXT)
    assert "# TYPE celery_task_sent_total counter\n" in plain
    assert "# TYPE celery_task_sent_created gauge\n" in plain
    assert "# EOF" not in plain and "# UNIT" not in plain


def test_exemplars_are_rendered_in_openmetrics_only() -> None:
    bucket = Exemplar({"trace_id": "4bf92f35"}, 0.42, 1700000000.5)
    tick = Exemplar({"trace_id": "c"}, 1.0)
    fams = [
        Family(
            metrics.TASK_RUNTIME,
            [(("t", "w", "q"), [1, 2, 2], 0.9)],
            (0.5, 1.0),
            created={("t", "w", "q"): 5.0},
            exemplars={("t", "w", "q"): {0: bucket}},
        ),
        Family(
            metrics.TASK_PROCESSED, [(("t", "w", "q"), 2)], exemplars={("t", "w", "q"): {0: tick}}
        ),
    ]
    text = exposition(Renderer(), fams, OPENMETRICS, lambda _: "")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ListCollector(fams))
    assert parsed(text, OPENMETRICS) == parsed(
        openmetrics.exposition.generate_latest(registry).decode(), OPENMETRICS
    )
    marked = [v for v in parsed(text, OPENMETRICS).values() if v[1] is not None]
    assert len(marked) == 2
    assert " # " not in Renderer().render(fams, TEXT)


class _ListCollector:
    def __init__(self, fams: list[Family]) -> None:
        self.fams = fams

    def collect(self):  # type: ignore[no-untyped-def]
        return [_client_family(f) for f in self.fams]


def test_every_contract_family_is_rendered_with_its_type() -> None:
    make_view = view_of(corpus_state())
    text = Renderer().render(families(make_view()))
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
    text = Renderer().render(families(view_of(state)()))
    line = next(ln for ln in text.splitlines() if ln.startswith("celery_task_sent_total{"))
    name = next(f for f in text_string_to_metric_families(text) if f.name == "celery_task_sent")
    value = name.samples[0].labels["name"]
    assert value.startswith("a\\x00b\\x1b")
    assert len(value) == 32 and value.endswith("…")
    assert "\x00" not in line and "\x1b" not in line


@pytest.mark.parametrize(
    ("value", "spelled"),
    [
        (3, "3"),
        (0.5, "0.5"),
        (1e21, "1e+21"),
        (float("inf"), "+Inf"),
        (-float("inf"), "-Inf"),
        (float("nan"), "NaN"),
        (1764460800.25, "1764460800.25"),
    ],
)
def test_values_are_spelled_as_prometheus_parses_them(value: float, spelled: str) -> None:
    assert format_value(value) == spelled


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
def test_no_created_series_leaves_out_only_the_created_samples(fmt: str) -> None:
    make_view = view_of(hostile_state())
    full = parsed(ours(make_view, fmt), fmt)
    text = exposition(Renderer(created_series=False), families(make_view()), fmt, lambda _: "")
    assert "_created" not in text
    assert parsed(text, fmt) == {k: v for k, v in full.items() if not k[0].endswith("_created")}


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
def test_the_exporters_own_counters_carry_created_too(fmt: str) -> None:
    samples = parsed(ours(view_of(corpus_state()), fmt), fmt)
    names = {name for name, _ in samples}
    for counter in ("events_rejected", "event_fields_invalid", "label_overflow"):
        assert f"celery_exporter_{counter}_created" in names, counter
