"""PromQL building blocks shared by every rule: scoped selectors and replica deduplication.

Two rules hold for every expression the generator writes:

- **Scoped.** Every series selector carries the user's ``selector`` setting (the celery-mixin's
  ``celerySelector``), so one Prometheus can hold several Celery clusters and rules for each.
- **Replica-safe.** Operators run two exporters against one broker so that a node loss does
  not blind them. Both export the same series, told apart only by ``instance``/``pod``. Every
  rule takes ``max without (instance, pod)`` of the raw series (or of their per-series rates)
  *before* any ``sum``, so two replicas count every task once; ``max`` also prefers the
  replica that has seen the whole window over one that restarted inside it.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable

from alerts.settings import AlertSettings, matchers


class PromQL:
    """Selectors and aggregations for one :class:`AlertSettings`."""

    def __init__(self, settings: AlertSettings) -> None:
        self._scope = matchers(settings.selector)
        self.replicas = ", ".join(settings.replica_label_names())

    def sel(self, metric: str, *label_matchers: str) -> str:
        """``metric{matchers..., <selector>}`` (no braces when there is nothing to match)."""
        parts = [*label_matchers, *self._scope]
        return f"{metric}{{{', '.join(parts)}}}" if parts else metric

    def one(self, expr: str) -> str:
        """One series per exporter-replica group: ``max without (instance, pod) (expr)``."""
        return f"max without ({self.replicas}) ({expr})"

    def rate(self, metric: str, window: str, *label_matchers: str) -> str:
        """The per-series rate, deduplicated across replicas."""
        return self.one(f"rate({self.sel(metric, *label_matchers)}[{window}])")

    def increase(self, metric: str, window: str, *label_matchers: str) -> str:
        return self.one(f"increase({self.sel(metric, *label_matchers)}[{window}])")

    def worker_state(self, *states: str) -> str:
        """Workers in any of ``states`` (one series per worker, value 1)."""
        selector = self.sel("celery_worker_state", one_of("state", states))
        return f"max without ({self.replicas}, state) ({selector}) == 1"

    def sum_rate(self, metric: str, window: str, drop: str, *label_matchers: str) -> str:
        """``sum without (drop) (max without (replicas) (rate(metric[window])))``."""
        return block(f"sum without ({drop})", self.rate(metric, window, *label_matchers))

    def sum_increase(self, metric: str, window: str, drop: str, *label_matchers: str) -> str:
        """``sum without (drop) (max without (replicas) (increase(metric[window])))``."""
        return block(f"sum without ({drop})", self.increase(metric, window, *label_matchers))


def block(head: str, body: str) -> str:
    """``head (\\n  body\\n)``: nested PromQL that still reads in the generated YAML."""
    return f"{head} (\n{textwrap.indent(body, '  ')}\n)"


def expr(text: str) -> str:
    return textwrap.dedent(text).strip()


def duration(seconds: float) -> str:
    """Seconds as a PromQL duration: ``90s``, ``1814400s``, ``45500ms``. PromQL takes neither
    fractions nor exponents, which ``f"{seconds:g}s"`` writes (``1.8144e+06s``, ``45.5s``)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def one_of(label: str, values: Iterable[str]) -> str:
    """A matcher for any of ``values``: ``label="a"`` or ``label=~"a|b"`` (regex-escaped)."""
    values = sorted(set(values))
    if len(values) == 1:
        return f'{label}="{values[0]}"'
    # RE2 reads a backslash before punctuation as the literal; PromQL strings double it.
    alternation = "|".join(re.escape(value) for value in values).replace("\\", "\\\\")
    return f'{label}=~"{alternation}"'
