"""Headless Chromium driven over the DevTools protocol on a pipe: no websocket, no download.

``--remote-debugging-pipe`` makes Chromium read commands from fd 3 and write replies to fd 4,
each message a JSON object ended by a NUL byte. That is all a test needs to load a page,
wait for its data in real time, read the DOM and take a screenshot.

Run as a script it screenshots a live status page::

    python -m tests.support.browser http://127.0.0.1:9808/ docs/status-page.png
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.procs import ManagedProcess, ProcessTracker, wait_until

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
# Every figure the status page shows, read in one go (the page's JS cannot run in between).
READ_FIGURES = """JSON.stringify({
  state: document.documentElement.dataset.state,
  refreshes: Number(document.documentElement.dataset.refreshes),
  problem: document.getElementById("problem").dataset.problem || "",
  message: document.getElementById("problem").textContent,
  figures: [...document.querySelectorAll("[data-metric]")].map((el) => ({
    ...el.dataset, text: el.textContent,
  })),
})"""


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _above_9(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class BrowserError(RuntimeError):
    """Chromium answered a command with an error, or exited."""


class Browser:
    """One Chromium process and one page (tab) in it."""

    def __init__(
        self,
        tracker: ProcessTracker,
        profile_dir: Path,
        size: tuple[int, int] = (1280, 900),
        binary: str | None = None,
    ) -> None:
        binary = binary or find_chromium()
        if binary is None:
            raise RuntimeError("chromium not found: install it with 'apt-get install chromium'")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # bash moves chromium's pipe ends to fds 3 and 4 and execs it (preexec_fn would be
        # unsafe with threads); above 9 they cannot clash with 3 and 4 while being moved.
        commands_read, replies_write = _above_9(commands_read), _above_9(replies_write)
        wire = (f'exec "$0" "$@" 3<&{commands_read} 4>&{replies_write} '
                f"{commands_read}<&- {replies_write}>&-")  # fmt: skip
        argv = ["/bin/bash", "-c", wire, binary, *FLAGS, f"--user-data-dir={profile_dir}",
                f"--window-size={size[0]},{size[1]}", "about:blank"]  # fmt: skip
        self.process = ManagedProcess(
            argv, tracker.log_dir / f"chromium-{len(tracker.processes)}.log"
        )
        self.process.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.process.log_path, "ab") as log:
            self.process.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                pass_fds=(commands_read, replies_write),
            )  # fmt: skip
        tracker.processes.append(self.process)  # stopped at teardown, pass or fail
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False, session=True)  # fmt: skip
        self.call("Network.enable", session=True)

    # ------------------------------------------------------------------ protocol

    def call(self, method: str, session: bool = False, timeout: float = 15.0, **params: Any) -> Any:
        """Send one command and return its result; events meanwhile go to their handlers."""
        deadline = time.monotonic() + timeout
        wanted = self._send(method, params, session)
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == wanted:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if reply.get("method") in self._handlers:
                self._handlers[reply["method"]](reply.get("params", {}))

    def _send(self, method: str, params: dict[str, Any], session: bool = True) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _read(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise BrowserError(f"no reply to {method} from chromium")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium exited:\n{self.process.log_text()[-2000:]}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    # ------------------------------------------------------------------ page

    def open(self, url: str) -> None:
        result = self.call("Page.navigate", url=url, session=True)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           session=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def set_headers(self, headers: dict[str, str]) -> None:
        """Extra HTTP headers on every later request of the page (empty dict: none)."""
        self.call("Network.setExtraHTTPHeaders", headers=headers, session=True)

    def cancel_auth_prompts(self, url_pattern: str) -> None:
        """Answer HTTP auth challenges of matching requests as a user cancelling the dialog.

        A desktop browser then hands the 401 to the page; headless Chromium, with no dialog
        to show, would fail the request instead. Events are handled while commands wait.
        """
        self._handlers["Fetch.requestPaused"] = lambda event: self._send(
            "Fetch.continueRequest", {"requestId": event["requestId"]}
        )
        self._handlers["Fetch.authRequired"] = lambda event: self._send(
            "Fetch.continueWithAuth",
            {"requestId": event["requestId"], "authChallengeResponse": {"response": "CancelAuth"}},
        )
        self.call("Fetch.enable", handleAuthRequests=True, patterns=[{"urlPattern": url_pattern}],
                  session=True)  # fmt: skip

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", session=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        for fd in (self._commands, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.process.stop(timeout=5)


class StatusPage:
    """The exporter's status page as a test sees it: the figures it shows right now."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser

    def read(self) -> dict[str, Any]:
        return json.loads(self.browser.evaluate(READ_FIGURES))

    def wait(self, predicate, timeout: float = 15.0, message: str = "status page") -> dict:  # type: ignore[no-untyped-def]
        """Read the page until ``predicate(page)`` holds; return that reading."""

        def check() -> dict[str, Any] | None:
            page = self.read()
            return page if predicate(page) else None

        return wait_until(check, timeout=timeout, interval=0.1, message=message)


def figure(page: dict[str, Any], metric: str, **labels: str) -> dict[str, str]:
    """The one element showing ``metric`` with these labels (data-queue, data-hostname...)."""
    found = [
        f for f in page["figures"]
        if f["metric"] == metric and all(f.get(k) == v for k, v in labels.items())
    ]  # fmt: skip
    assert len(found) == 1, f"{metric} {labels}: {len(found)} elements in {page['figures']}"
    return found[0]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.support.browser STATUS_PAGE_URL OUTPUT.png", file=sys.stderr)
        return 2
    url, output = argv
    with tempfile.TemporaryDirectory() as tmp:
        tracker = ProcessTracker(Path(tmp) / "logs")
        try:
            browser = Browser(tracker, Path(tmp) / "profile")
            browser.open(url)
            # Two refreshes: the rates are shown from the second one on.
            StatusPage(browser).wait(lambda p: p["refreshes"] >= 2, timeout=30,
                                     message="two successful refreshes")  # fmt: skip
            browser.screenshot(Path(output))
        finally:
            tracker.stop_all()
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
