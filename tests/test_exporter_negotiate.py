"""Accept and Accept-Encoding are lists with q-values, not substrings (unit tests).

The end-to-end checks, on a real exporter, are in tests/test_exporter_http.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.negotiate import (
    OPENMETRICS,
    TEXT,
    choose_encoding,
    choose_format,
    parse_list,
)
from exporter.negotiate import PROMETHEUS_ACCEPT as PROMETHEUS_2

PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PROMETHEUS_2, OPENMETRICS),
        (PROMETHEUS_3, OPENMETRICS),
        (None, TEXT),
        ("", TEXT),
        ("*/*", TEXT),
        ("text/plain", TEXT),
        ("text/plain;version=0.0.4", TEXT),
        ("application/openmetrics-text", OPENMETRICS),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", OPENMETRICS),
        # A version we do not produce is not a match; the fallback is text.
        ("application/openmetrics-text;version=0.0.1", TEXT),
        # q=0 means "not acceptable", even where the substring is present.
        ("application/openmetrics-text;q=0, text/plain", TEXT),
        ("application/openmetrics-text;q=0", TEXT),
        ("text/plain;q=0, */*", OPENMETRICS),  # the most specific range decides
        ("text/plain;q=0.4, application/openmetrics-text;q=0.6", OPENMETRICS),
        ("application/openmetrics-text;q=0.4, text/plain;q=0.6", TEXT),
        ("text/plain, application/openmetrics-text", TEXT),  # equal weights: first named
        ("application/openmetrics-text, text/plain", OPENMETRICS),
        ("application/json", TEXT),  # names nothing we serve: text, as client_python does
        ("text/plain;q=0", None),  # refuses text, does not accept OpenMetrics: 406
        ("*/*;q=0", None),
        ("APPLICATION/OpenMetrics-Text ; Version=1.0.0", OPENMETRICS),
        ("application/openmetrics-text;q=banana, text/plain", TEXT),  # bad q: element ignored
    ],
)
def test_accept(accept: str | None, expected: str | None) -> None:
    assert choose_format(accept) == expected


@pytest.mark.parametrize(
    ("header", "gzip", "identity"),
    [
        (None, False, True),  # no header: no encoding
        ("gzip", True, True),
        ("gzip, deflate, br", True, True),
        ("GZIP;q=1.0", True, True),
        ("gzip;q=0", False, True),  # listed, yet not acceptable
        ("deflate, br", False, True),  # not listed: not acceptable
        ("*", True, True),
        ("*;q=0, identity", False, True),
        ("identity;q=0, gzip", True, False),
        ("gzip;q=0.5, identity", False, True),  # identity preferred
        ("x-gzip", True, True),
        ("br;q=1, gzip;q=0.001", True, True),
    ],
)
def test_accept_encoding(header: str | None, gzip: bool, identity: bool) -> None:
    encoding = choose_encoding(header)
    assert (encoding.gzip, encoding.identity) == (gzip, identity)


MEDIA = st.sampled_from(
    [
        "application/openmetrics-text",
        "application/openmetrics-text;version=1.0.0",
        "application/openmetrics-text;version=0.0.1",
        "text/plain",
        "text/plain;version=0.0.4",
        "text/*",
        "application/*",
        "*/*",
        "application/json",
        "text/html",
    ]
)
QVALUE = st.sampled_from(["", ";q=0", ";q=0.1", ";q=0.5", ";q=0.75", ";q=1", ";q=0.999"])


def _weight(element: str) -> float:
    _, _, q = element.partition(";q=")
    return float(q) if q else 1.0


def _serves(offer: str, element: str) -> bool:
    media = element.split(";q=")[0]
    if offer == OPENMETRICS:
        om = "application/openmetrics-text"
        return media in (om, om + ";version=1.0.0", "application/*", "*/*")
    return media in ("text/plain", "text/plain;version=0.0.4", "text/*", "*/*")


@given(st.lists(st.tuples(MEDIA, QVALUE).map("".join), min_size=1, max_size=6))
def test_the_choice_is_never_refused_and_never_beaten(elements: list[str]) -> None:
    """Whatever the list: the format chosen is one the header accepts (or the fallback when
    it names neither format), and no other format has a strictly higher weight."""
    chosen = choose_format(",".join(elements))
    weights = {}
    for offer in (OPENMETRICS, TEXT):
        matching = [e for e in elements if _serves(offer, e)]
        # The most specific matching range wins; here the specificity order is the
        # catalogue's (exact with version > exact > type/* > */*).
        matching.sort(key=lambda e: ("*/*" in e, "/*" in e, ";version" not in e))
        weights[offer] = _weight(matching[0]) if matching else None
    if chosen is None:
        assert weights[TEXT] == 0 and not weights[OPENMETRICS]
        return
    if weights[chosen] is None:  # the fallback: the header names no format it accepts
        assert chosen == TEXT and not weights[OPENMETRICS]
        return
    assert weights[chosen] > 0
    other = TEXT if chosen == OPENMETRICS else OPENMETRICS
    assert weights[other] is None or weights[other] <= weights[chosen]


@given(st.text(max_size=200))
def test_any_header_parses_without_error(header: str) -> None:
    assert choose_format(header) in (OPENMETRICS, TEXT, None)
    choose_encoding(header)
    for r in parse_list(header):
        assert 0.0 <= r.q <= 1.0
