"""The envelope decoder against real captured envelopes, non-JSON content and fuzzed input."""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.decode import Rejected, decode_envelope
from exporter.state import State

CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "corpus" / "celery-5.7-events.jsonl")
    .read_text()
    .splitlines()
]


def envelope(
    body: bytes, content_type: str = "application/json", encoding: str = "base64"
) -> bytes:
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode() if encoding == "base64" else body.decode(),
            "content-type": content_type,
            "content-encoding": "utf-8",
            "headers": {},
            "properties": {"body_encoding": encoding, "delivery_tag": "t"},
        }
    )


def test_every_captured_envelope_decodes_to_events_with_a_type() -> None:
    total = 0
    for line in CORPUS:
        events = decode_envelope(line["data"])
        assert events, line["channel"]
        for event in events:
            assert event["type"].replace("-", ".") in line["channel"] or line["channel"].endswith(
                "task.multi"
            )
        total += len(events)
    assert total == 31  # 28 messages, task.multi lists included


class Boom:
    """If this is ever unpickled, the decoder executed attacker-controlled code."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path("/nonexistent/should-never-exist").write_text, ("pwned",))


@pytest.mark.parametrize(
    "ctype",
    [
        "application/x-python-serialize",
        "application/x-yaml",
        "application/x-msgpack",
        "text/plain",
        None,
    ],
)
def test_non_json_content_types_are_rejected_unread(ctype: str | None) -> None:
    data = orjson.dumps(
        {
            "body": base64.b64encode(pickle.dumps(Boom())).decode(),
            "content-type": ctype,
            "properties": {"body_encoding": "base64"},
        }
    )
    with pytest.raises(Rejected) as info:
        decode_envelope(data)
    assert info.value.reason == "content_type"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "malformed_envelope"),
        (b"[1, 2]", "malformed_envelope"),
        (envelope(b"{not json"), "malformed_body"),
        (envelope(b"42"), "malformed_body"),
        (
            orjson.dumps(
                {
                    "body": "!!!",
                    "content-type": "application/json",
                    "properties": {"body_encoding": "base64"},
                }
            ),
            "body_encoding",
        ),
        (orjson.dumps({"body": 5, "content-type": "application/json"}), "malformed_body"),
        (b" " * (9 * 1024 * 1024), "oversized"),
    ],
)
def test_malformed_input_gets_a_precise_reason(data: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        decode_envelope(data)
    assert info.value.reason == reason


def test_plain_utf8_bodies_decode_too() -> None:
    event = {"type": "worker-heartbeat", "hostname": "w@h", "timestamp": 1.0}
    assert decode_envelope(envelope(orjson.dumps(event), encoding="utf-8")) == (event,)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "task-sent",
                "task-received",
                "task-started",
                "task-succeeded",
                "task-failed",
                "task-retried",
                "task-revoked",
                "task-rejected",
                "worker-heartbeat",
                "worker-online",
                "worker-offline",
                "x",
            ]
        )
    },
    optional={
        "hostname": json_values | st.text(max_size=300),
        "timestamp": json_values,
        "uuid": json_values | st.uuids().map(str),
        "name": json_values,
        "queue": json_values,
        "eta": json_values,
        "runtime": json_values,
        "exception": json_values,
        "freq": json_values,
        "active": json_values,
        "processed": json_values,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(event_like, st.lists(event_like, max_size=5), json_values),
    raw=st.binary(max_size=200),
    which=st.integers(0, 2),
)
def test_fuzzed_envelopes_never_crash_and_every_event_is_counted_or_rejected(
    body: object, raw: bytes, which: int
) -> None:
    state = State()
    data = [envelope(orjson.dumps(body)), raw, envelope(raw)][which]
    try:
        events = decode_envelope(data)
    except Rejected:
        return
    state.apply(events, received=1.0)
    assert sum(state.events.values()) + sum(state.rejected.values()) == len(events)
