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

import hashlib
import hmac
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
# bcrypt of a random password: compared against when the user is unknown, so that a wrong
# user name costs the same time as a wrong password.
_DUMMY_HASH = bcrypt.hashpw(b"not-a-user", bcrypt.gensalt(rounds=10))


class WebConfigError(ValueError):
    """The web config file is unreadable or invalid; the message says where."""


@dataclass
class BasicAuth:
    """Checks ``Authorization: Basic`` credentials against bcrypt hashes, with a cache.

    bcrypt is slow on purpose (tens of ms); Prometheus sends the same credentials every
    scrape, so a verified (user, password, hash) is remembered by its SHA-256, as
    exporter-toolkit does.
    """

    users: dict[str, bytes]
    _verified: set[bytes] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, user: str, password: str) -> bool:
        hashed = self.users.get(user)
        digest = hashlib.sha256(
            b"\0".join([user.encode(), password.encode(), hashed or b""])
        ).digest()
        with self._lock:
            if hashed is not None and digest in self._verified:
                return True
        ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH)
        ok = ok and hashed is not None and hmac.compare_digest(hashed, self.users[user])
        if ok:
            with self._lock:
                self._verified.add(digest)
        return ok


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    basic_auth: BasicAuth | None = None
    headers: dict[str, str] = field(default_factory=dict)


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


def _basic_auth(users: dict[str, Any]) -> BasicAuth:
    hashes: dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"basic_auth_users.{user}: not a bcrypt hash")
        hashes[str(user)] = hashed.encode()
    return BasicAuth(hashes)


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
        headers={str(k): str(v) for k, v in headers.items()},
    )
