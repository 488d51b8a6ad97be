"""Cardinality guards: label values come from outside, so each label has a cap, and the
series they make together have a budget.

Past a label's cap a new value is folded into ``other`` and the fold is counted; values are
also cut to a maximum length and stripped of control characters, so a hostile or buggy
producer cannot blow up the series count, the exposition size, or a Prometheus parser.
Per-label caps alone still allow their product (1000 names x 1000 hosts is 2.5M series, about
a gigabyte of RSS), so new label sets also draw from a total series budget.
"""

from __future__ import annotations

OTHER = "other"
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def clean(value: str, max_length: int) -> str:
    """Cut ``value`` to ``max_length`` characters and spell control characters as ``\\xNN``."""
    if not value.isprintable():
        value = value.translate(_CONTROL)
    if len(value) > max_length:
        value = value[: max_length - 1] + "…"
    return value


class LabelGuard:
    """Interns the values of one label, up to ``cap`` distinct ones.

    ``get`` is on the hot path: a known value costs one dict lookup.
    """

    __slots__ = ("_raw", "cap", "known", "label", "max_length", "overflow")

    def __init__(self, label: str, cap: int, max_length: int = 128) -> None:
        self.label = label
        self.cap = cap
        self.max_length = max_length
        self.known: dict[str, str] = {}  # raw value -> cleaned label value
        self._raw: dict[str, list[str]] = {}  # cleaned -> the raw values that map to it
        self.overflow = 0

    def __len__(self) -> int:
        return len(self._raw)

    def get(self, value: str) -> str:
        known = self.known.get(value)
        if known is not None:
            return known
        return self._admit(value)

    def full(self) -> bool:
        return len(self._raw) >= self.cap

    def _admit(self, value: str) -> str:
        cleaned = clean(value, self.max_length)
        raws = self._raw.get(cleaned)
        if raws is None:
            if self.full():
                self.overflow += 1
                return OTHER
            raws = self._raw[cleaned] = []
        raws.append(value)
        self.known[value] = cleaned
        return cleaned

    def forget(self, cleaned: str) -> None:
        """Free the slot of a label value that is gone for good (a forgotten worker)."""
        for raw in self._raw.pop(cleaned, ()):
            self.known.pop(raw, None)


class SeriesBudget:
    """A total number of series that new label sets may create; past it they fold into one
    ``other`` label set, and the folds are counted."""

    __slots__ = ("limit", "overflow", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.overflow = 0

    def take(self, series: int) -> bool:
        if self.used + series > self.limit:
            self.overflow += 1
            return False
        self.used += series
        return True

    def give_back(self, series: int) -> None:
        self.used = max(0, self.used - series)
