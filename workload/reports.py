"""The CPU-bound work behind ``generate_report``: statistics and a CSV file on disk.

``data`` is a JSON object: ``rows`` (a list of numbers) or ``size`` (how many rows to generate
from a seed derived from the user id), an optional ``title``, and ``fail_times`` (fault
injection: the first N attempts fail with ReportTransientError, so retries can be exercised).
The work grows with rows x ``WORKLOAD_REPORT_WORK_ROUNDS``.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
from pathlib import Path
from typing import Any

from workload.errors import ReportInputError

ALLOWED_KEYS = {"rows", "size", "title", "fail_times"}
DEFAULT_SIZE = 1000
MAX_TITLE = 200
MAX_FAIL_TIMES = 100


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate(user_id: object, data: object, max_rows: int) -> dict[str, Any]:
    """Return the normalised request or raise ReportInputError saying what is wrong."""
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
        raise ReportInputError("user_id must be a positive integer")
    if not isinstance(data, dict):
        raise ReportInputError("data must be a JSON object")
    unknown = set(data) - ALLOWED_KEYS
    if unknown:
        raise ReportInputError(f"data has unknown keys: {', '.join(sorted(map(str, unknown)))}")
    title = data.get("title", f"Report for user {user_id}")
    if not isinstance(title, str) or len(title) > MAX_TITLE:
        raise ReportInputError(f"data.title must be a string of at most {MAX_TITLE} characters")
    fail_times = data.get("fail_times", 0)
    if isinstance(fail_times, bool) or not isinstance(fail_times, int):
        raise ReportInputError("data.fail_times must be an integer")
    if not 0 <= fail_times <= MAX_FAIL_TIMES:
        raise ReportInputError(f"data.fail_times must be between 0 and {MAX_FAIL_TIMES}")
    if "rows" in data:
        rows = data["rows"]
        if not isinstance(rows, list) or not all(_is_number(v) for v in rows):
            raise ReportInputError("data.rows must be a list of finite numbers")
        if not rows or len(rows) > max_rows:
            raise ReportInputError(f"data.rows must hold 1 to {max_rows} numbers")
        size = len(rows)
    else:
        size = data.get("size", min(DEFAULT_SIZE, max_rows))
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= max_rows:
            raise ReportInputError(f"data.size must be an integer from 1 to {max_rows}")
        rows = None
    return {"title": title, "rows": rows, "size": size, "fail_times": fail_times}


def generate_rows(user_id: int, size: int) -> list[float]:
    rng = random.Random(user_id)  # deterministic: the same user gets the same sample data
    return [round(rng.gauss(100.0, 25.0), 4) for _ in range(size)]


def summarise(rows: list[float], rounds: int) -> dict[str, Any]:
    """Statistics plus a digest computed ``rounds`` times over: the CPU-heavy part."""
    ordered = sorted(rows)
    digest = hashlib.sha256()
    for round_no in range(rounds):
        digest.update(round_no.to_bytes(4, "big"))
        for value in ordered:
            digest.update(repr(value).encode())
    count = len(ordered)
    return {
        "count": count,
        "sum": math.fsum(ordered),
        "mean": statistics.fmean(ordered),
        "stdev": statistics.pstdev(ordered) if count > 1 else 0.0,
        "min": ordered[0],
        "p50": ordered[(count - 1) // 2],
        "p95": ordered[min(count - 1, math.ceil(0.95 * count) - 1)],
        "max": ordered[-1],
        "digest": digest.hexdigest(),
    }


def write(path: Path, title: str, rows: list[float], stats: dict[str, Any]) -> int:
    """Write the report as CSV (a header with the statistics, then rows with running totals)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", *(f"# {key}={value}" for key, value in stats.items()), "n,value,total"]
    total = 0.0
    for index, value in enumerate(rows, start=1):
        total += value
        lines.append(f"{index},{value},{total:.4f}")
    text = "\n".join(lines) + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # readers never see a half-written report
    return len(text.encode())
