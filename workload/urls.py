"""Which URLs the workload may fetch: scheme and host allow-lists, no private networks.

One function, :func:`check_url`, serves the API and the workers. The host is first put in the
form the HTTP client will use (IDNA/UTS #46, as requests does: fullwidth digits become ASCII
ones), then turned into addresses by the operating system's resolver, the one the client
connects with. In numeric mode (no DNS) the resolver also reads every other spelling of an
address -- ``2130706433``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``, IPv6 forms -- so the API
refuses those exactly as the worker does. Only the worker (``resolve=True``) also looks names
up in DNS and checks every address they resolve to.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import idna

from workload.config import UrlPolicy
from workload.errors import UrlNotAllowed

MAX_URL_LENGTH = 2048
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


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


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form reaches: mapped, NAT64, 6to4 or IPv4-compatible."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64 or ip in IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:  # a tunnel to an address we cannot see
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def client_host(host: str) -> str:
    """The ASCII host an HTTP client sends to the resolver (requests' IDNA encoding)."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise UrlNotAllowed(f"host {host!r} is not a valid host name: {exc}") from None


def addresses(host: str, port: int, resolve: bool) -> list[str]:
    """The addresses a client connecting to ``host`` would use.

    Any numeric spelling is read by the system resolver without DNS; a name is looked up only
    when ``resolve`` (the worker), else the result is empty (the API does no DNS).
    """
    # An IPv6 zone (fe80::1%eth0) names an interface, not an address: check the address.
    numeric = host.split("%", 1)[0] if ":" in host else host
    try:
        infos = socket.getaddrinfo(
            numeric, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except socket.gaierror:
        if not resolve:
            return []
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise UrlNotAllowed(f"host {host!r} does not resolve: {exc}") from None
    except UnicodeError as exc:
        raise UrlNotAllowed(f"host {host!r} is not a valid host name: {exc}") from None
    return [str(info[4][0]) for info in infos]


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
    host = client_host((parts.hostname or "").rstrip(".").lower())
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
    for address in addresses(host, port, resolve):
        if not _is_public(address):
            if address == host:
                raise UrlNotAllowed(f"address {host} is not public; {hint}")
            raise UrlNotAllowed(f"host {host!r} is the non-public address {address}; {hint}")
