"""A TCP proxy in front of a real redis-server that can corrupt what a subscriber reads.

A real Redis never sends a malformed reply, so the exporter's handling of one is tested by
putting this proxy between the real exporter and a real Redis: every byte is forwarded both
ways, and ``inject()`` writes extra bytes into the stream of each connection that sent a
PSUBSCRIBE, as a broken proxy or a bit flip on the wire would.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.procs import free_port


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.subscriber = False
        self.lock = threading.Lock()  # one writer at a time towards the client

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class FaultProxy:
    """Listens on ``port`` and forwards to 127.0.0.1:``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._pairs: list[_Pair] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def subscribers(self) -> int:
        return sum(1 for p in self._pairs if p.subscriber and p.client.fileno() >= 0)

    def inject(self, data: bytes) -> int:
        """Write ``data`` to every live subscriber; returns how many got it."""
        count = 0
        for pair in list(self._pairs):
            if pair.subscriber:
                with pair.lock, contextlib.suppress(OSError):
                    pair.client.sendall(data)
                    count += 1
        return count

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for pair in self._pairs:
            pair.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            pair = _Pair(client, upstream)
            self._pairs.append(pair)
            threading.Thread(target=self._up, args=(pair,), daemon=True).start()
            threading.Thread(target=self._down, args=(pair,), daemon=True).start()

    def _up(self, pair: _Pair) -> None:
        """Client -> Redis; notes which connections subscribe."""
        with contextlib.suppress(OSError):
            while chunk := pair.client.recv(65536):
                if b"PSUBSCRIBE" in chunk.upper():
                    pair.subscriber = True
                pair.upstream.sendall(chunk)
        pair.close()

    def _down(self, pair: _Pair) -> None:
        """Redis -> client."""
        with contextlib.suppress(OSError):
            while chunk := pair.upstream.recv(65536):
                with pair.lock:
                    pair.client.sendall(chunk)
        pair.close()
