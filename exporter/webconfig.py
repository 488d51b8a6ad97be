"""The web configuration file, in the format of Prometheus' own exporters (exporter-toolkit).

```yaml
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert   # optional, default NoClientCert
  client_ca_file: ca.crt                         # needed to verify client certificates
  min_version: TLS12                             # optional
  max_version: TLS13                             # optional
basic_auth_users:
  prometheus: $2y$10$...                         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':')
http_server_config:
  headers:                                       # extra response headers
    X-Frame-Options: deny
```

Unknown keys are errors, as in exporter-toolkit: a typo must not silently disable TLS.
Relative file paths are relative to the config file.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version"}  # fmt: skip
TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
# $2a$/$2b$/$2y$, a two-digit cost 04-31, then 22 characters of salt and 31 of hash in
# bcrypt's base64. bcrypt's checkpw returns False for some malformed hashes and raises for
# others; checked here, a typo is a start-up error instead of a user who can never log in.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# bcrypt reads 72 bytes of a password: 4.x silently ignores the rest, 5.x raises. A longer
# password never matches, whatever the installed version.
MAX_PASSWORD_BYTES = 72
# An HTTP token (RFC 9110 §5.6.2), and the headers the server itself owns: a configured
# Content-Length or Transfer-Encoding would corrupt the response framing.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
RESERVED_HEADERS = {"content-length", "content-type", "content-encoding", "transfer-encoding",
                    "connection", "www-authenticate", "vary"}  # fmt: skip


class WebConfigError(ValueError):
    """The web config file is unreadable or invalid; the message says where."""


@functools.cache
def _dummy_hash() -> bytes:
    """bcrypt of a random password, checked when the user is unknown, so that a wrong user
    name costs the same time as a wrong password (made on first use: --help stays fast)."""
    return bcrypt.hashpw(b"not-a-user", bcrypt.gensalt(rounds=10))


@dataclass
class BasicAuth:
    """Checks ``Authorization: Basic`` credentials against bcrypt hashes, with a cache.

    bcrypt is slow on purpose (tens of ms); Prometheus sends the same credentials every
    scrape, so each user's last verified (password, hash) is remembered by its SHA-256, as
    exporter-toolkit does. ``cached`` is the cheap part (no bcrypt), ``verify`` the slow one.
    """

    users: dict[str, bytes]
    _verified: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def _digest(password: bytes, hashed: bytes) -> bytes:
        return hashlib.sha256(hashed + b"\0" + password).digest()

    def cached(self, user: str, password: str) -> bool | None:
        """True: these credentials were verified before; False: they can never match;
        None: unknown, bcrypt must decide (``verify``)."""
        secret = password.encode()
        if len(secret) > MAX_PASSWORD_BYTES:
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return None  # still costs a bcrypt in verify(): no user enumeration by timing
        with self._lock:
            known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, self._digest(secret, hashed)):
            return True
        return None

    def verify(self, user: str, password: str) -> bool:
        """The bcrypt check; a success is cached."""
        secret = password.encode()
        if len(secret) > MAX_PASSWORD_BYTES:
            return False
        hashed = self.users.get(user)
        try:
            ok = bcrypt.checkpw(secret, hashed or _dummy_hash())
        except ValueError:  # a NUL byte or such: never a match, never a 500
            return False
        if not ok or hashed is None:
            return False
        with self._lock:
            self._verified[user] = self._digest(secret, hashed)
        return True

    def check(self, user: str, password: str) -> bool:
        known = self.cached(user, password)
        return known if known is not None else self.verify(user, password)


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    basic_auth: BasicAuth | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What is configured, for a log line (no secrets)."""
        return {
            "tls": self.ssl_context is not None,
            "client_auth": self.ssl_context is not None
            and self.ssl_context.verify_mode != ssl.CERT_NONE,
            "basic_auth_users": len(self.basic_auth.users) if self.basic_auth else 0,
            "headers": sorted(self.headers),
        }


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where} must be a mapping")
    return value


def _check_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise WebConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _tls_context(tls: dict[str, Any], base: Path) -> ssl.SSLContext:
    _check_keys(tls, TLS_KEYS, "tls_server_config")
    if not tls.get("cert_file") or not tls.get("key_file"):
        raise WebConfigError("tls_server_config needs both cert_file and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(base / tls["cert_file"], base / tls["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"tls_server_config: cannot load certificate/key: {exc}") from exc
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in tls:
            if tls[key] not in TLS_VERSIONS:
                raise WebConfigError(f"tls_server_config.{key}: one of {', '.join(TLS_VERSIONS)}")
            setattr(context, attr, TLS_VERSIONS[tls[key]])
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type: one of {', '.join(CLIENT_AUTH)}")
    context.verify_mode = CLIENT_AUTH[auth_type]
    if tls.get("client_ca_file"):
        try:
            context.load_verify_locations(base / tls["client_ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"tls_server_config.client_ca_file: {exc}") from exc
    elif auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        raise WebConfigError(f"client_auth_type {auth_type} needs client_ca_file")
    return context


def _printable(name: str) -> str:
    """A name for a one-line error message: quoted when it holds control characters."""
    return name if name.isprintable() else repr(name)


def _basic_auth(users: dict[str, Any]) -> BasicAuth:
    hashes: dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(
                f"basic_auth_users.{_printable(str(user))}: not a valid bcrypt hash (expected "
                "$2a$, $2b$ or $2y$, a cost of 04-31 and 53 characters, as htpasswd -nBC 10 makes)"
            )
        hashes[str(user)] = hashed.encode()
    return BasicAuth(hashes)


def _headers(headers: dict[str, Any]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in headers.items():
        name, value = str(name), str(value)
        where = f"http_server_config.headers.{_printable(name)}"
        if not HEADER_NAME.fullmatch(name):
            raise WebConfigError(f"{where}: not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise WebConfigError(f"{where}: set by the exporter itself, not configurable")
        # CR or LF would let the file inject headers or split the response.
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
            raise WebConfigError(f"{where}: the value contains CR, LF or another control character")
        checked[name] = value
    return checked


def load_web_config(path: str | Path | None) -> WebConfig:
    """Parse and validate the file; raise :class:`WebConfigError` with a precise message."""
    if not path:
        return WebConfig()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise WebConfigError(f"cannot read web config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise WebConfigError(f"web config {path} is not valid YAML: {exc}") from exc
    config = _mapping(raw, "web config")
    _check_keys(config, TOP_KEYS, "web config")
    tls = _mapping(config.get("tls_server_config"), "tls_server_config")
    users = _mapping(config.get("basic_auth_users"), "basic_auth_users")
    http = _mapping(config.get("http_server_config"), "http_server_config")
    _check_keys(http, {"headers"}, "http_server_config")
    headers = _mapping(http.get("headers"), "http_server_config.headers")
    return WebConfig(
        ssl_context=_tls_context(tls, path.parent) if tls else None,
        basic_auth=_basic_auth(users) if users else None,
        headers=_headers(headers),
    )
