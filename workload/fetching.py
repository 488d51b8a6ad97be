"""A careful HTTP GET for the workers: URL policy on every hop, a timeout and a size cap.

Redirects are followed by hand (at most ``MAX_REDIRECTS``) so that each new location passes
the same URL policy; a body larger than the cap is cut off while streaming, never buffered.
Callers turn the outcome into their own task's transient or permanent error.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin

import requests

from workload.config import UrlPolicy
from workload.urls import check_url

MAX_REDIRECTS = 3
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# Statuses that say "try again later" although they are 4xx.
RETRYABLE_4XX = {408, 425, 429}


class BodyTooLarge(Exception):
    """The response body exceeds the configured cap."""


@dataclass(frozen=True)
class Fetched:
    url: str
    status: int
    content_type: str
    body: bytes

    @property
    def transient_failure(self) -> bool:
        return self.status >= 500 or self.status in RETRYABLE_4XX

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def fetch(url: str, policy: UrlPolicy, timeout: float, max_bytes: int) -> Fetched:
    """GET ``url``; raises UrlNotAllowed, BodyTooLarge or requests.RequestException."""
    with requests.Session() as session:
        session.trust_env = False  # no proxies or netrc picked up from the worker's environment
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, policy, resolve=True)
            with session.get(url, timeout=timeout, stream=True, allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status_code in REDIRECT_STATUSES and location:
                    url = urljoin(url, location)
                    continue
                body = _read_capped(resp, max_bytes)
                return Fetched(url, resp.status_code, resp.headers.get("Content-Type", ""), body)
    # Too many redirects: report the last one as a final (permanent) answer.
    return Fetched(url, 310, "", b"")


def _read_capped(resp: requests.Response, max_bytes: int) -> bytes:
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"response declares {declared} bytes; the limit is {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(chunk_size=64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"response is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
