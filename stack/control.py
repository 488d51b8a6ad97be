"""The control socket: how ``scripts/stack fault`` and ``scripts/stack status`` reach a stack.

A Unix socket in the stack's state directory (``control.sock``, mode 0600): only the user
who started the stack can cause faults in it, nothing listens on the network, and the state
directory already names the stack (``--state-dir``). One JSON line per request; the answer is
JSON lines, ``{"say": text}`` for the user as the stack acts, then one
``{"ok": bool, "error": ..., "data": ...}``.

Unix socket paths are limited to about 100 bytes; a state directory deeper than that gets its
socket in the temporary directory under a name derived from the directory's path, which the
client derives the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import socketserver
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_SOCKET_PATH = 100
Handler = Callable[[dict[str, Any], Callable[[str], None]], Any]


class NotRunning(Exception):
    """No stack answers on this state directory's control socket."""


def socket_path(state: Path) -> Path:
    path = state.resolve() / "control.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"celery-observatory-{os.getuid()}-{digest}.sock"


def answering(path: Path) -> bool:
    """Whether a stack listens on ``path`` (a file left by a stack that was killed does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class ControlServer:
    """Serves requests on the control socket in daemon threads; ``handle`` does the work."""

    def __init__(self, path: Path, handle: Handler) -> None:
        self.path = path

        class RequestHandler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                def say(text: str) -> None:
                    self._send({"say": text})

                try:
                    request = json.loads(self.rfile.readline(1 << 16))
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    data = handle(request, say)
                except Exception as exc:  # one line back to the client, the stack keeps running
                    self._send({"ok": False, "error": str(exc) or type(exc).__name__})
                else:
                    self._send({"ok": True, "data": data})

            def _send(self, message: dict[str, Any]) -> None:
                with contextlib.suppress(OSError):  # the client went away
                    self.wfile.write(json.dumps(message).encode() + b"\n")
                    self.wfile.flush()

        if path.exists():
            path.unlink()  # left by a stack that was killed; callers checked answering() first
        old_umask = os.umask(0o177)  # the socket is created 0600: the owner's alone
        try:
            self.server = socketserver.ThreadingUnixStreamServer(str(path), RequestHandler)
        finally:
            os.umask(old_umask)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="control", daemon=True
        )

    def start(self) -> ControlServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(state: Path, message: dict[str, Any], say: Callable[[str], None]) -> Any:
    """Send ``message`` to the stack of ``state``; pass its lines to ``say``; return its data.

    Raises NotRunning when no stack answers, RuntimeError with the stack's one-line error.
    """
    path = socket_path(state)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            raise NotRunning(
                f"no stack is running with state directory {state}"
                " (start one with scripts/stack, or pass the --state-dir it uses)"
            ) from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        with sock.makefile("rb") as answers:
            for line in answers:
                answer = json.loads(line)
                if "say" in answer:
                    say(answer["say"])
                elif answer.get("ok"):
                    return answer.get("data")
                else:
                    raise RuntimeError(answer.get("error", "the stack refused"))
    raise RuntimeError("the stack closed the connection without an answer")
