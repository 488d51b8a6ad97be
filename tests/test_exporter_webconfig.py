"""The web config file's checks and the basic-auth cache (unit tests; the end-to-end checks
on a real exporter are in tests/test_exporter_security.py)."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest

from exporter.webconfig import BasicAuth, WebConfigError, load_web_config

HASH_72 = bcrypt.hashpw(b"a" * 72, bcrypt.gensalt(rounds=4))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def test_a_password_over_72_bytes_never_matches_whatever_bcrypt_does() -> None:
    """bcrypt 4.x ignores bytes past 72 (so "a"*73 would match), 5.x raises: neither."""
    auth = BasicAuth({"prometheus": HASH_72})
    assert auth.check("prometheus", "a" * 72)
    assert not auth.check("prometheus", "a" * 73)
    assert not auth.check("prometheus", "a" * 72 + "é")
    assert auth.cached("prometheus", "a" * 1000) is False  # refused before any bcrypt


def test_the_cache_remembers_only_the_verified_password_of_each_user() -> None:
    auth = BasicAuth({"prometheus": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))})
    assert auth.cached("prometheus", "right") is None  # not verified yet: bcrypt decides
    assert auth.verify("prometheus", "right")
    assert auth.cached("prometheus", "right") is True
    assert auth.cached("prometheus", "wrong") is None
    assert not auth.verify("prometheus", "wrong")
    assert auth.cached("prometheus", "right") is True  # a failure does not evict it
    assert auth.cached("mallory", "right") is None
    assert not auth.verify("mallory", "right")
    assert not auth.check("prometheus", "right\0")  # a NUL byte: no match, no exception


@pytest.mark.parametrize(
    "hashed",
    [
        "$2b$10$short",
        "$2b$99$" + "a" * 53,  # cost out of range
        "$2x$10$" + "a" * 53,  # the buggy legacy variant
        "$2b$10$" + "a" * 52,  # one character short
        "$2b$10$" + "a" * 52 + "!",
        "plain-text-password",
    ],
)
def test_a_malformed_hash_is_a_start_up_error_naming_the_user(tmp_path: Path, hashed: str) -> None:
    path = _write(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    with pytest.raises(WebConfigError, match=r"basic_auth_users\.prometheus: not a valid bcrypt"):
        load_web_config(path)


@pytest.mark.parametrize("variant", ["$2a$", "$2b$", "$2y$"])
def test_every_bcrypt_variant_that_htpasswd_writes_is_accepted(
    tmp_path: Path, variant: str
) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", variant)
    web = load_web_config(_write(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n"))
    assert web.basic_auth is not None and web.basic_auth.check("prometheus", "pw")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ('  X-Frame-Options: "deny\\r\\nSet-Cookie: a=b"', "CR, LF"),
        ('  X-Frame-Options: "deny\\nX-Other: 1"', "CR, LF"),
        ('  "X-Bad Name": deny', "not a valid header name"),
        ('  "X-Bad\\nName": deny', "not a valid header name"),
        ("  Content-Length: '5'", "set by the exporter itself"),
    ],
)
def test_header_values_cannot_split_the_response(
    tmp_path: Path, headers: str, message: str
) -> None:
    path = _write(tmp_path, f"http_server_config:\n  headers:\n  {headers}\n")
    with pytest.raises(WebConfigError, match=message) as error:
        load_web_config(path)
    assert "\n" not in str(error.value)  # one line, even for a name with a newline in it


def test_valid_headers_are_kept(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        "    Strict-Transport-Security: max-age=31536000; includeSubDomains\n",
    )
    assert load_web_config(path).headers == {
        "X-Frame-Options": "deny",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    }
