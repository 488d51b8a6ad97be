"""Baseline consumer: Celery's own EventReceiver + State, as other exporters are built.

    python bench/baselines/receiver_state.py redis://127.0.0.1:6379/0 status.json

Counts every event handed to it after ``State.event()`` has applied it, and writes
``{"ready": bool, "events": n, "error": str|None}`` to the status file twice a second. Like
the peer exporter with default flags, it stops at the first connection error.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from celery import Celery


def main(url: str, status_path: str) -> None:
    status = Path(status_path)
    app = Celery("baseline", broker=url, set_as_current=False)
    app.conf.update(accept_content=["json"], event_serializer="json")
    state = app.events.State()
    counts = {"events": 0, "ready": False, "error": None}

    def on_event(event: dict) -> None:
        state.event(event)
        counts["events"] += 1

    def report() -> None:
        while True:
            tmp = status.with_suffix(".tmp")
            tmp.write_text(json.dumps(counts))
            tmp.replace(status)
            time.sleep(0.5)

    threading.Thread(target=report, daemon=True).start()
    try:
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": on_event})
            counts["ready"] = True
            receiver.capture(limit=None, timeout=None, wakeup=False)
    except Exception as exc:
        counts["error"] = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)  # let the reporter write the error
        raise


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
