"""gunicorn's threaded worker, with its own error pages in the API's JSON shape.

gunicorn answers requests it cannot parse (a bad request line, headers too large, a malformed
chunked body, ...) itself, before the Flask app sees them: ``Worker.handle_error`` picks the
status and calls ``gunicorn.util.write_error``, which writes an HTML page. gunicorn has no
setting for that page's format, so this worker class -- what ``workload-api`` runs, or
``gunicorn -k workload.gunicorn_worker.JsonErrorWorker`` -- replaces the page writer in its
own process with one that writes ``{"error": ..., "status": N}`` like every other answer.
Status codes, logging and the access log stay gunicorn's.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` with a JSON body instead of HTML."""
    body = json.dumps({"error": mesg or reason, "status": status_int}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


class JsonErrorWorker(ThreadWorker):
    """gthread worker (``--threads``) whose protocol-error pages are JSON."""

    def init_process(self) -> None:
        # Runs in the forked worker only, before it serves anything. Fail loudly if a future
        # gunicorn stops writing error pages through this function.
        if not callable(getattr(util, "write_error", None)):
            raise RuntimeError("gunicorn.util.write_error is gone; update JsonErrorWorker")
        util.write_error = write_json_error
        super().init_process()
