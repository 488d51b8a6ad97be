"""Content negotiation for ``/metrics``: ``Accept`` and ``Accept-Encoding`` as q-value lists.

Both headers are lists of ranges with parameters and a weight (RFC 9110 §12.4-12.5.3), read
the way prometheus_client's ``choose_encoder`` splits them, plus the weights it ignores:
``q=0`` means "not acceptable", and a range's weight comes from the most specific range
that matches (``text/plain;q=0, */*`` excludes text). Among acceptable formats the highest
weight wins, then the one named first. Prometheus' own header
(``application/openmetrics-text;version=1.0.0,...;q=0.75,text/plain;version=0.0.4;q=0.5,
*/*;q=0.1``) selects OpenMetrics 1.0.0; no header, ``*/*`` or ``text/plain`` select text.
A header naming nothing we serve (``application/json``) falls back to text, as
prometheus_client and Go's expfmt do; only a header that refuses text outright (and does
not accept OpenMetrics) gets ``406``.
"""

from __future__ import annotations

from dataclasses import dataclass

OPENMETRICS = "openmetrics"
TEXT = "text"
FORMATS = (OPENMETRICS, TEXT)
# What Prometheus 2.x sends on every scrape (with Accept-Encoding: gzip). Tests and
# bench/scrape.py send it too, so that they measure the path Prometheus takes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

# What each format answers to: (type, subtype) -> the "version" parameters we can serve.
_OFFERS = {
    OPENMETRICS: (("application", "openmetrics-text"), {"", "1.0.0"}),
    # Text 1.0.0 differs from 0.0.4 only in quoting UTF-8 names, which we never emit.
    TEXT: (("text", "plain"), {"", "0.0.4", "1.0.0"}),
}


@dataclass(frozen=True)
class Range:
    """One element of an Accept-style list."""

    value: str  # media range ("text/plain", "*/*") or coding ("gzip", "*"), lower case
    params: dict[str, str]  # lower-case names, without q
    q: float
    position: int


def _qvalue(text: str) -> float | None:
    """RFC 9110 qvalue: 0 to 1 with up to three decimals; anything else is invalid."""
    try:
        q = float(text)
    except ValueError:
        return None
    if not 0.0 <= q <= 1.0 or len(text) > 5:
        return None
    return q


def parse_list(header: str | None) -> list[Range]:
    """Split ``a/b;p=v;q=0.5, c/d`` into ranges; malformed elements are skipped."""
    ranges: list[Range] = []
    for position, element in enumerate((header or "").split(",")):
        value, *raw_params = element.split(";")
        value = value.strip().lower()
        if not value:
            continue
        params: dict[str, str] = {}
        q: float | None = 1.0
        for raw in raw_params:
            name, sep, param = raw.partition("=")
            name, param = name.strip().lower(), param.strip().strip('"')
            if not sep or not name:
                continue
            if name == "q":
                q = _qvalue(param)
            else:
                params.setdefault(name, param)
        if q is not None:
            ranges.append(Range(value, params, q, position))
    return ranges


def _media_match(offer: str, ranges: list[Range]) -> Range | None:
    """The most specific range matching ``offer`` (first of equals), or None."""
    (kind, subtype), versions = _OFFERS[offer]
    best: Range | None = None
    best_rank = -1
    for r in ranges:
        r_kind, _, r_sub = r.value.partition("/")
        if (r_kind, r_sub) == (kind, subtype):
            if r.params.get("version", "") not in versions:
                continue  # a version we do not produce (OpenMetrics 0.0.1)
            rank = 3 if "version" in r.params else 2
        elif (r_kind, r_sub) == (kind, "*"):
            rank = 1
        elif (r_kind, r_sub) == ("*", "*"):
            rank = 0
        else:
            continue
        if rank > best_rank:
            best, best_rank = r, rank
    return best


def choose_format(accept: str | None) -> str | None:
    """``"openmetrics"``, ``"text"``, or None when the client refuses both (406)."""
    ranges = parse_list(accept)
    if not ranges:
        return TEXT
    matches = {offer: _media_match(offer, ranges) for offer in FORMATS}
    acceptable = [(o, r) for o, r in matches.items() if r is not None and r.q > 0]
    if acceptable:
        # Highest weight, then the range named first; one range matching both (``*/*``)
        # means text, the format every scraper reads.
        acceptable.sort(key=lambda item: (-item[1].q, item[1].position, item[0] != TEXT))
        return acceptable[0][0]
    if matches[TEXT] is not None:  # text explicitly refused, OpenMetrics not accepted
        return None
    return TEXT


@dataclass(frozen=True)
class Encoding:
    """What Accept-Encoding allows for a response body."""

    gzip: bool  # gzip is acceptable and at least as wanted as no encoding
    identity: bool  # the body may be sent unencoded


def choose_encoding(accept_encoding: str | None) -> Encoding:
    """``gzip`` only when acceptable: listed (or ``*``) with q > 0, and not outweighed by
    an explicit ``identity`` (or ``*``) weight. An absent header means no encoding;
    ``identity`` stays acceptable unless refused by ``identity;q=0`` or ``*;q=0``."""
    by_value: dict[str, float] = {}
    for r in parse_list(accept_encoding):
        by_value.setdefault("gzip" if r.value == "x-gzip" else r.value, r.q)
    star = by_value.get("*")
    gzip_q = by_value.get("gzip", star if star is not None else 0.0)
    identity_q = by_value.get("identity", star)  # None: not named, acceptable by default
    return Encoding(
        gzip=gzip_q > 0 and (identity_q is None or gzip_q >= identity_q),
        identity=identity_q is None or identity_q > 0,
    )
