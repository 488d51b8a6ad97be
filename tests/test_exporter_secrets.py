"""Broker passwords never reach a log line or an error message, however they are spelled.

Users paste passwords with ``@ / : # ?`` into URLs without percent-encoding them. Masking
cuts the userinfo at the *last* ``@`` (where Redis's own URL parser cuts it), keeps the user
name and masks the password; a userinfo that cannot be parsed is masked whole.
"""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.logs import mask_secrets, mask_url
from tests.support.exporter import ExporterProcess
from tests.support.procs import PYTHON, RedisServer, free_port

MARK = "Zq9"  # starts every generated password, so "not in the output" cannot be luck
PASSWORDS = st.text(alphabet="@/:#?;!%abcXYZ019-_.", min_size=0, max_size=24).map(
    lambda tail: MARK + tail
)
USERS = st.sampled_from(["", "exporter", "user.name", "default"])


@given(user=USERS, password=PASSWORDS)
def test_the_password_is_masked_and_the_rest_kept_as_given(user: str, password: str) -> None:
    url = f"redis://{user}:{password}@redis.example:6380/2"
    assert mask_url(url) == f"redis://{user}:****@redis.example:6380/2"


@given(password=PASSWORDS)
def test_a_password_inside_any_message_is_masked(password: str) -> None:
    text = f"Error 111 connecting to rediss://exporter:{password}@10.0.0.7:6379/0. Refused."
    masked = mask_secrets(text)
    assert MARK not in masked
    assert masked == "Error 111 connecting to rediss://exporter:****@10.0.0.7:6379/0. Refused."


@given(first=PASSWORDS, second=PASSWORDS)
def test_every_url_of_a_sentinel_list_is_masked(first: str, second: str) -> None:
    text = f"sentinel://:{first}@s1:26379;sentinel://:{second}@s2:26379/0"
    assert mask_secrets(text) == "sentinel://:****@s1:26379;sentinel://:****@s2:26379/0"


@given(junk=st.text(alphabet="@/#?[]abc", min_size=1, max_size=12), password=PASSWORDS)
def test_a_userinfo_that_cannot_be_parsed_is_masked_whole(junk: str, password: str) -> None:
    if not any(c in junk for c in "@/#?[]"):
        junk += "@"
    # The user part itself holds a reserved character: where the password starts is a
    # guess, so nothing of the userinfo is shown.
    url = f"amqp://us{junk}er:{password}@rabbit:5672//"
    assert mask_url(url) == "amqp://****@rabbit:5672//"


def test_urls_without_a_password_are_unchanged() -> None:
    for url in (
        "redis://localhost:6379/0",
        "amqp://guest@rabbit//",
        "sentinel://s1:26379;sentinel://s2:26379",
        "redis://host:abc/0",  # even an invalid port stays as given
    ):
        assert mask_url(url) == url


@pytest.mark.parametrize("reserved", ["/", "?", "#"])
def test_a_password_that_breaks_the_url_is_refused_and_never_echoed(reserved: str) -> None:
    # urlsplit (and so redis-py) ends the host part at the first '/', '?' or '#'.
    url = f"redis://:pa{reserved}ss@w0rd@127.0.0.1:6379/0"
    result = subprocess.run([PYTHON, "-m", "exporter", "--broker-url", url],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert "ss@w0rd" not in result.stderr + result.stdout and "pa" + reserved not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "percent-encode" in line
    assert "redis://:****@127.0.0.1:6379/0" in line


def test_the_exporter_never_logs_a_password_with_reserved_characters(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    password = "s3cr@t:pw@1"  # '@' and ':' parse (at the last '@'); '/', '?', '#' do not
    server = RedisServer(procs, tmp_path / "redis", password=password).start()
    # As typed by a user: unencoded. Redis's parser splits at the last '@' and reads it.
    url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    exporter = ExporterProcess(procs, url, args=["--log-level", "DEBUG"]).start()
    assert exporter.scrape().value("celery_exporter_broker_up") == 1
    server.kill()  # errors that carry the URL: lost subscription, failed polls
    exporter.wait_for(lambda s: s.value("celery_exporter_broker_up") == 0)
    exporter.wait_for(
        lambda s: s.value("celery_exporter_event_source_reconnects_total", reason="error") >= 1
    )
    log = exporter.log_text()
    for fragment in ("s3cr", "t:pw", "pw@1"):
        assert fragment not in log, fragment
    assert f"redis://:****@127.0.0.1:{server.port}/0" in log

    # The start-up check's error for a wrong password names the problem, not the secret.
    wrong = f"redis://:{password}x@127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [PYTHON, "-m", "exporter", "--broker-url", wrong, "--no-wait-for-broker"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "s3cr" not in result.stderr + result.stdout
    assert "redis://:****@127.0.0.1" in result.stderr
