"""A Redis Sentinel deployment on free ports: a master, a replica and three sentinels.

Real processes (``redis-server`` and ``redis-sentinel``), fast failure detection
(``down-after-milliseconds`` 1000), and a quorum of two, as a small production setup has.
"""

from __future__ import annotations

from pathlib import Path

import redis

from tests.support.procs import (
    ManagedProcess,
    ProcessTracker,
    RedisServer,
    free_port,
    require_binary,
    wait_until,
)

MASTER_NAME = "obsmaster"


class SentinelSetup:
    def __init__(self, tracker: ProcessTracker, root: Path, sentinels: int = 3) -> None:
        self.tracker = tracker
        self.root = root
        self.master = RedisServer(tracker, root / "master")
        self.replica = RedisServer(tracker, root / "replica")
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[ManagedProcess] = []

    def start(self) -> SentinelSetup:
        self.master.start()
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        wait_until(
            lambda: self.replica.client().info("replication")["master_link_status"] == "up",
            message="replica in sync",
        )
        for port in self.sentinel_ports:
            self.sentinels.append(self._start_sentinel(port))
        wait_until(self._sentinels_agree, timeout=30, message="sentinels see each other")
        return self

    def _start_sentinel(self, port: int) -> ManagedProcess:
        directory = self.root / f"sentinel-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "sentinel.conf"  # sentinel rewrites its config: one per process
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        binary = require_binary("redis-sentinel", "redis-sentinel")
        return self.tracker.start([binary, str(config)], f"sentinel-{port}")

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            state = self.sentinel(port).sentinel_master(MASTER_NAME)
            if (
                state["num-other-sentinels"] < len(self.sentinel_ports) - 1
                or state["num-slaves"] < 1
            ):
                return False
        return True

    def master_port(self) -> int:
        _host, port = self.sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(
            MASTER_NAME
        )
        return int(port)

    def url(self, db: int = 0) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinel_ports)

    def server(self, port: int) -> RedisServer:
        return self.master if port == self.master.port else self.replica
