"""Serve the runbooks over HTTP, so the runbook_url of every alert opens in a browser.

    python alerts/runbook_server.py --listen 127.0.0.1:8088        # alerts/runbooks
    python runbook_server.py --listen 0.0.0.0:8088 --directory /runbooks   # in a container

The local stack runs it in-process (:class:`RunbookServer`) and generates its rules with
``runbook_base_url`` pointing here; compose runs this file as a service with the runbooks
mounted. Standard library only, so it runs from a bare ``python`` image. It serves the
``*.md`` files of one directory as UTF-8 plain text (browsers show Markdown as text instead
of downloading it) and nothing else: no listing, no subdirectories, no other files.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RUNBOOKS_DIR = Path(__file__).resolve().parent / "runbooks"
PAGE = re.compile(r"^/([A-Za-z0-9_-]+\.md)$")


def _handler(directory: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "celery-observatory-runbooks"

        def do_GET(self) -> None:
            self._respond(with_body=True)

        def do_HEAD(self) -> None:
            self._respond(with_body=False)

        def _respond(self, with_body: bool) -> None:
            match = PAGE.match(self.path.split("?", 1)[0])
            page = directory / match[1] if match else None
            if page is None or not page.is_file():
                self.send_error(404, "no such runbook")
                return
            body = page.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per click is noise in the stack's output

    return Handler


class RunbookServer:
    """The runbooks on ``host:port`` (0: a free port) in a daemon thread; ``base_url`` is the
    value for the ``runbook_base_url`` setting."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, directory: Path = RUNBOOKS_DIR
    ) -> None:
        self.server = ThreadingHTTPServer((host, port), _handler(directory))
        self.base_url = f"http://{host}:{self.server.server_port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="runbooks", daemon=True
        )

    def start(self) -> RunbookServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> RunbookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8088", help="host:port to serve on")
    parser.add_argument(
        "--directory", type=Path, default=RUNBOOKS_DIR, help="the runbooks' directory"
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"error: --listen expects host:port, got {args.listen!r}", file=sys.stderr)
        return 2
    if not args.directory.is_dir():
        print(f"error: {args.directory} is not a directory", file=sys.stderr)
        return 2
    try:
        server = RunbookServer(host, int(port), args.directory)
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"serving {args.directory} at {server.base_url}/", flush=True)
    try:
        server.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
