"""Real local servers the workload's tasks talk to in tests: HTTP (images, JSON) and SMTP.

Both run in threads of the test process on free ports of 127.0.0.1 and record what they saw,
so a test can assert on the requests and messages that really arrived.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from PIL import Image

from tests.support.procs import free_port


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    """A real PNG made with Pillow (a gradient, so it does not compress to nothing)."""
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, max(1, width // 32)):
        for y in range(height):
            image.putpixel((x, y), (x % 256, y % 256, 128))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    # When set, the request waits until the event is set (a task "mid-flight").
    gate: threading.Event | None = None


class LocalHttpServer:
    """Serves scripted replies per path; each path's replies are used in order, the last repeats."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, *replies: Reply) -> str:
        with self.lock:
            self.routes[path] = list(replies)
            self.hits[path] = 0
        return self.url(path)

    def hit_count(self, path: str) -> int:
        with self.lock:
            return self.hits.get(path, 0)

    def _next_reply(self, path: str) -> Reply | None:
        with self.lock:
            replies = self.routes.get(path)
            if replies is None:
                return None
            self.hits[path] += 1
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                reply = server._next_reply(self.path) or Reply(404, b"not found", "text/plain")
                if reply.gate is not None:
                    reply.gate.wait(timeout=60)
                with contextlib.suppress(OSError):  # the client may be gone (a killed worker)
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> LocalHttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    subject: str
    at: float


class SinkHandler:
    """aiosmtpd handler: accepts mail, except addresses scripted to fail.

    ``reject*@`` → 550 (permanent); ``busy*@`` → 451 always (transient);
    ``flaky*@`` → 451 on the first attempt for that address, then accepted.
    """

    def __init__(self) -> None:
        self.messages: list[ReceivedMail] = []
        self.rcpt_attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:  # fmt: skip
        local = address.split("@", 1)[0].lower()
        with self.lock:
            attempt = self.rcpt_attempts[address] = self.rcpt_attempts.get(address, 0) + 1
        if local.startswith("reject"):
            return "550 5.1.1 no such user here"
        if local.startswith("busy") or (local.startswith("flaky") and attempt == 1):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.original_content or envelope.content)
        with self.lock:
            self.messages.append(
                ReceivedMail(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    str(parsed["Subject"]),
                    time.monotonic(),
                )
            )
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[ReceivedMail]:
        with self.lock:
            return [m for m in self.messages if address in m.recipients]

    def attempts(self, address: str) -> int:
        with self.lock:
            return self.rcpt_attempts.get(address, 0)


class SmtpSink:
    def __init__(self) -> None:
        self.handler = SinkHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
