"""Which of the stack's ports are taken, before anything starts.

Only a *listener* makes a port busy. A port whose last connections sit in TIME_WAIT (a stack
that just stopped) is free for a server that sets SO_REUSEADDR, as every server of the stack
does (Redis, Prometheus, Alertmanager, gunicorn, aiosmtpd, Python's http.server and the
exporter), so the check binds with SO_REUSEADDR too. A plain bind would refuse for about a
minute after every clean stop. On Linux, an SO_REUSEADDR bind still fails while anything
listens on the port, on 127.0.0.1 or on a wildcard address.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, fields

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Ports:
    """Every TCP port the stack listens on (all on 127.0.0.1)."""

    redis: int = 6380
    api: int = 8000
    exporter: int = 9808
    prometheus: int = 9090
    alertmanager: int = 9093
    smtp: int = 8025
    images: int = 8081
    webhook: int = 5001

    def items(self) -> list[tuple[str, int]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


def listening(port: int, host: str = HOST) -> bool:
    """True if something listens on ``host:port`` (a TIME_WAIT leftover does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def busy_port(ports: Ports) -> str | None:
    """A one-line error for the first port something listens on, naming the flag that moves it."""
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            return f"--{name}-port and --{seen[port]}-port are both {port}: give each its own"
        seen[port] = name
    for name, port in ports.items():
        if listening(port):
            return f"port {port} ({name}) is in use: choose another with --{name}-port"
    return None
