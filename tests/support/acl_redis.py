"""A private redis-server running the deployment's own redis.conf and rendered ACL file.

Used by tests/test_compose.py to prove what each ACL user of compose/redis/users.acl can and
cannot do against a real server. Extends RedisServer (tests/support/procs.py) without
changing it: the config file must come first on redis-server's command line, and every
client must authenticate because the default user is off.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import redis

from tests.support.procs import ProcessTracker, RedisServer, require_binary

# Grants that name commands newer than the local redis-server, with the version that added
# them. Debian 12 ships Redis 7.0, the images use 7.2: CLIENT SETINFO arrived in 7.2.
NEWER_GRANTS = {"+client|setinfo": (7, 2)}


def redis_version() -> tuple[int, int]:
    out = subprocess.run(
        [require_binary("redis-server", "redis-server"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    if match is None:
        raise RuntimeError(f"cannot read the redis-server version from {out!r}")
    return int(match[1]), int(match[2])


def render_acl(
    script: Path, template: Path, output: Path, passwords: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run the deployment's render-acl.sh with exactly ``passwords`` in its environment."""
    env = {"PATH": os.environ["PATH"], **passwords}
    return subprocess.run(
        ["sh", str(script), str(template), str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def adapt_to_local_redis(acl_text: str, version: tuple[int, int]) -> str:
    """Drop grants the local redis-server does not know (it would refuse the whole file)."""
    for grant, since in NEWER_GRANTS.items():
        if version < since:
            acl_text = acl_text.replace(f" {grant}", "")
    return acl_text


class AclRedisServer(RedisServer):
    """redis-server started with ``config`` and ``aclfile``; clients log in as ``username``."""

    def __init__(
        self,
        tracker: ProcessTracker,
        data_dir: Path,
        config: Path,
        aclfile: Path,
        username: str,
        password: str,
    ) -> None:
        super().__init__(tracker, data_dir)
        self.config = config
        self.aclfile = aclfile
        self.username = username
        self.password = password

    def local_config(self) -> Path:
        """The deployment's config with `dir` pointing at this test's data directory.

        Redis changes into `dir` while it parses the file, so the container's /data cannot
        stay in it even if the command line overrides it later.
        """
        text = re.sub(r"^dir .*$", f"dir {self.data_dir}", self.config.read_text(), flags=re.M)
        path = self.data_dir.parent / f"{self.config.stem}-local.conf"
        path.write_text(text)
        return path

    def argv(self) -> list[str]:
        # The deployment's config first, then what a test must override: a loopback port
        # and a private data directory instead of the container's /data.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            require_binary("redis-server", "redis-server"),
            str(self.local_config()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--aclfile", str(self.aclfile),
        ]  # fmt: skip

    def client(self, db: int = 0, **kwargs: object) -> redis.Redis:
        kwargs.setdefault("username", self.username)
        kwargs.setdefault("password", self.password)
        return super().client(db, **kwargs)

    def login(self, username: str | None, password: str | None) -> redis.Redis:
        """A client of another user (None, None: no AUTH at all, i.e. the default user)."""
        return super().client(0, username=username, password=password)

    def url_for(self, username: str, password: str, db: int = 0) -> str:
        return f"redis://{username}:{password}@127.0.0.1:{self.port}/{db}"
