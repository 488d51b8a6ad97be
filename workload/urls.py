"""Which URLs the workload may fetch: scheme and host allow-lists, no private networks.

The API checks the URL as written (cheap, no DNS); the worker checks it again and also every
address the host name resolves to, so that a public-looking name pointing at 127.0.0.1 or a
cloud metadata address is refused unless ``WORKLOAD_ALLOW_PRIVATE_NETWORKS`` is set.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from workload.config import UrlPolicy
from workload.errors import UrlNotAllowed

MAX_URL_LENGTH = 2048


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    for entry in allowed:
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


def _is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _literal_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_url(url: object, policy: UrlPolicy, resolve: bool = False) -> str:
    """Return the URL if the policy allows it, else raise UrlNotAllowed saying why."""
    if not isinstance(url, str) or not url:
        raise UrlNotAllowed("url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise UrlNotAllowed(f"url is longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in url):
        raise UrlNotAllowed("url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlNotAllowed(f"url is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        raise UrlNotAllowed(
            f"scheme {scheme or '(none)'!r} is not allowed; allowed: {', '.join(policy.schemes)}"
        )
    if parts.username is not None or parts.password is not None:
        raise UrlNotAllowed("credentials in URLs are not allowed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UrlNotAllowed("url has no host")
    if not _host_allowed(host, policy.hosts):
        raise UrlNotAllowed(f"host {host!r} is not in WORKLOAD_ALLOWED_HOSTS")
    if not policy.allow_private:
        _refuse_private(host, port or (443 if scheme == "https" else 80), resolve)
    return url


def _refuse_private(host: str, port: int, resolve: bool) -> None:
    hint = "set WORKLOAD_ALLOW_PRIVATE_NETWORKS=true to allow it"
    if host == "localhost" or host.endswith(".localhost"):
        raise UrlNotAllowed(f"host {host!r} is a private address; {hint}")
    if _literal_ip(host):
        if not _is_public(host):
            raise UrlNotAllowed(f"address {host} is not public; {hint}")
        return
    if not resolve:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlNotAllowed(f"host {host!r} does not resolve: {exc}") from None
    for info in infos:
        address = str(info[4][0])
        if not _is_public(address):
            raise UrlNotAllowed(f"host {host!r} resolves to non-public {address}; {hint}")
