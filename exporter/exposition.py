"""One renderer for both formats Prometheus reads: text 0.0.4 and OpenMetrics 1.0.0.

prometheus_client renders a sample in a few microseconds (label dicts, sorting, escaping
and float formatting per sample); at 100k series that is most of a second, and Prometheus
asks for OpenMetrics, so that slow path is the one it would take. Here both formats come
from the same families in one pass: the escaped label string of each label set is cached,
counts are ints, and a histogram's bucket lines are built from per-bucket prefixes.

What differs between the formats is only spelling:

- text: counters are named ``x_total`` in HELP and TYPE; ``_created`` samples follow the
  family as a separate gauge ``x_created`` (as prometheus_client writes them);
- OpenMetrics: families are named without ``_total``, a ``# UNIT`` line names the unit a
  family's name ends with, ``_created`` sits with its label set, HELP escapes quotes,
  counters and buckets may carry an exemplar, and the exposition ends with ``# EOF``.

``--metric-prefix`` and ``--static-label`` are applied here, to every family of ours (not
to the process metrics). tests/test_exporter_exposition.py checks that both formats parse
to exactly what prometheus_client renders from the same families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from exporter.collector import Exemplar, Family
from exporter.metrics import DEFAULT_PREFIX, Metric, rename
from exporter.negotiate import OPENMETRICS, TEXT

CONTENT_TYPES = {
    TEXT: "text/plain; version=0.0.4; charset=utf-8",
    OPENMETRICS: "application/openmetrics-text; version=1.0.0; charset=utf-8",
}
MAX_CACHED_LABEL_SETS = 500_000


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str, fmt: str = TEXT) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if fmt == OPENMETRICS else text


_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}


def format_value(value: float) -> str:
    """Numbers as Prometheus (Go's ParseFloat) reads them."""
    if type(value) is int:
        return str(value)
    text = repr(float(value))
    return _SPECIAL.get(text, text) if text[-1] in "fn" else text


def format_bound(bound: float) -> str:
    """The ``le`` label of a bucket, spelled as prometheus_client spells it."""
    return repr(float(bound))


def format_exemplar(exemplar: Exemplar) -> str:
    labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(exemplar.labels.items()))
    text = f" # {{{labels}}} {format_value(exemplar.value)}"
    if exemplar.timestamp is not None:
        text += f" {format_value(exemplar.timestamp)}"
    return text


@dataclass(frozen=True)
class Names:
    """A family's names in one format, after ``--metric-prefix``."""

    family: str  # HELP/TYPE name
    sample: str  # counters: x_total; others: the family name
    created: str  # x_created


class Renderer:
    """Renders families to either format, caching each label set's escaped string."""

    def __init__(
        self,
        metric_prefix: str = DEFAULT_PREFIX,
        static_labels: Mapping[str, str] | None = None,
        created_series: bool = True,
    ) -> None:
        self.prefix = metric_prefix
        self.created_series = created_series
        static = dict(static_labels or {})
        self._static = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in static.items())
        self._label_strings: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        self._created_strings: dict[float, str] = {}  # a series' creation time never changes

    def _labels(self, names: tuple[str, ...], values: tuple[str, ...]) -> str:
        """``a="x",b="y"`` for one label set, static labels last; "" when there are none."""
        key = (names, values)
        text = self._label_strings.get(key)
        if text is None:
            if len(self._label_strings) >= MAX_CACHED_LABEL_SETS:
                self._label_strings.clear()
            parts = [
                f'{name}="{escape_label_value(value)}"'
                for name, value in zip(names, values, strict=True)
            ]
            if self._static:
                parts.append(self._static)
            text = ",".join(parts)
            self._label_strings[key] = text
        return text

    def _created(self, ts: float) -> str:
        text = self._created_strings.get(ts)
        if text is None:
            if len(self._created_strings) >= MAX_CACHED_LABEL_SETS:
                self._created_strings.clear()
            text = self._created_strings[ts] = format_value(ts)
        return text

    def names(self, metric: Metric, fmt: str) -> Names:
        family = rename(metric.family, self.prefix)
        sample = rename(metric.name, self.prefix)
        return Names(sample if fmt == TEXT else family, sample, family + "_created")

    def render(self, families: Iterable[Family], fmt: str = TEXT) -> str:
        out: list[str] = []
        openmetrics = fmt == OPENMETRICS
        for family in families:
            metric = family.metric
            names = self.names(metric, fmt)
            out.append(f"# HELP {names.family} {escape_help(metric.help, fmt)}\n")
            out.append(f"# TYPE {names.family} {metric.kind}\n")
            if openmetrics and metric.unit:
                out.append(f"# UNIT {names.family} {metric.unit}\n")
            # OpenMetrics keeps _created with its label set; text moves it to a gauge after.
            created: list[str] = out if openmetrics else []
            if metric.kind == "histogram":
                self._histogram(out, family, names, created, openmetrics)
            else:
                self._simple(out, family, names, created, openmetrics)
            if created and not openmetrics:
                out.append(f"# HELP {names.created} {escape_help(metric.help)}\n")
                out.append(f"# TYPE {names.created} gauge\n")
                out.extend(created)
        return "".join(out)

    def _simple(
        self, out: list[str], family: Family, names: Names, created: list[str], marks: bool
    ) -> None:
        """Counter and gauge lines; counters' ``_created`` lines go to ``created``."""
        label_names, labels = family.metric.labels, self._labels
        name, created_name = names.sample, names.created
        when = family.created if self.created_series and family.created is not None else {}
        exemplars = (family.exemplars or {}) if marks else {}
        append = out.append
        for values, value in family.samples:
            text = labels(label_names, values)
            braces = f"{{{text}}}" if text else ""
            mark = _exemplar_marks(exemplars.get(values), 1)[0] if exemplars else ""
            append(f"{name}{braces} {format_value(value)}{mark}\n")
            if (ts := when.get(values)) is not None:
                created.append(f"{created_name}{braces} {self._created(ts)}\n")

    def _histogram(
        self, out: list[str], family: Family, names: Names, created: list[str], marks: bool
    ) -> None:
        """Buckets, count and sum of each label set; its ``_created`` line to ``created``."""
        label_names, name, created_name = family.metric.labels, names.sample, names.created
        when = family.created if self.created_series and family.created is not None else {}
        exemplars = (family.exemplars or {}) if marks else {}
        # Per bucket: the end of its line up to the count, e.g. '0.5"} '.
        tails = [f'{format_bound(b)}"}} ' for b in family.bounds] + ['+Inf"} ']
        no_marks = [""] * len(tails)
        append, extend = out.append, out.extend
        for values, cumulative, total in family.samples:
            text = self._labels(label_names, values)
            head = f'{name}_bucket{{{text},le="' if text else f'{name}_bucket{{le="'
            braces = f"{{{text}}}" if text else ""
            bucket_marks = (
                _exemplar_marks(exemplars.get(values), len(tails)) if exemplars else no_marks
            )
            extend(
                [
                    f"{head}{tail}{count}{mark}\n"
                    for tail, count, mark in zip(tails, cumulative, bucket_marks, strict=True)
                ]
            )
            append(f"{name}_count{braces} {cumulative[-1]}\n")
            append(f"{name}_sum{braces} {format_value(total)}\n")
            if (ts := when.get(values)) is not None:
                created.append(f"{created_name}{braces} {self._created(ts)}\n")


def _exemplar_marks(by_index: Mapping[int, Exemplar] | None, count: int) -> list[str]:
    if not by_index:
        return [""] * count
    return [format_exemplar(by_index[i]) if i in by_index else "" for i in range(count)]


def exposition(
    renderer: Renderer, families: Iterable[Family], fmt: str, trailer: Callable[[str], str]
) -> str:
    """The whole body: our families, then ``trailer(fmt)`` (process metrics), then EOF."""
    body = renderer.render(families, fmt) + trailer(fmt)
    return body + "# EOF\n" if fmt == OPENMETRICS else body
