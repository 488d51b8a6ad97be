"""Cardinality guard: label values come from outside, so each label has a cap.

Past the cap a new value is folded into ``other`` and the fold is counted; values are also
cut to a maximum length and stripped of control characters, so a hostile or buggy producer
cannot blow up the series count, the exposition size, or a Prometheus parser.
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

    __slots__ = ("cap", "known", "label", "max_length", "overflow")

    def __init__(self, label: str, cap: int, max_length: int = 128) -> None:
        self.label = label
        self.cap = cap
        self.max_length = max_length
        self.known: dict[str, str] = {}
        self.overflow = 0

    def get(self, value: str) -> str:
        known = self.known.get(value)
        if known is not None:
            return known
        return self._admit(value)

    def _admit(self, value: str) -> str:
        if len(self.known) >= self.cap:
            self.overflow += 1
            return OTHER
        cleaned = clean(value, self.max_length)
        self.known[value] = cleaned
        return cleaned

    def forget(self, value: str) -> None:
        """Free the slot of a value that is gone for good (a forgotten worker)."""
        self.known.pop(value, None)
