"""Startup: --help, env vars, and one clear line with a non-zero exit for every bad start."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.support.exporter import ExporterProcess, http_get
from tests.support.procs import PYTHON, free_port, wait_until


def run_exporter(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "exporter", *args], capture_output=True, text=True, timeout=60, env=env
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_help_explains_every_flag_and_its_env_var() -> None:
    result = run_exporter("--help")
    assert result.returncode == 0
    for flag in ("--broker-url", "--web.listen-address", "--web.config-file", "--queues",
                 "--worker-timeout", "--max-tracked-tasks", "--log-format"):  # fmt: skip
        assert flag in result.stdout
    assert "CELERY_EXPORTER_BROKER_URL" in result.stdout
    assert "CELERY_BROKER_URL" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--broker-url", "ftp://example"], 2, "unsupported broker URL scheme"),
        (["--broker-url", "redis://localhost/x"], 2, "is not a number"),
        (["--max-tracked-tasks", "0"], 2, "--max-tracked-tasks"),
        (["--runtime-buckets", "a,b"], 2, "comma-separated numbers"),
        (["--web.config-file", "/nonexistent/web.yml"], 2, "cannot read web config"),
        (["--no-such-flag"], 2, "No such option"),
        (["--admission-limit", "cpu=lots"], 2, "the limit is a whole number"),
        (["--static-label", "no-equals"], 2, "expected key=value"),
    ],
)
def test_bad_flags_exit_with_one_line(args: list[str], code: int, needle: str) -> None:
    result = run_exporter(*args)
    assert result.returncode == code
    assert needle in one_line(result.stderr)


def test_unknown_web_config_key_is_an_error_not_silently_ignored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "web.yml"
    config.write_text("tls_server_configuration:\n  cert_file: x\n")
    result = run_exporter("--web.config-file", str(config))
    assert result.returncode == 2
    assert "unknown key(s) tls_server_configuration" in one_line(result.stderr)


def test_unreachable_broker_without_waiting_exits_1_and_masks_the_password() -> None:
    port = free_port()
    result = run_exporter(
        "--broker-url", f"redis://:hunter2@127.0.0.1:{port}/0", "--no-wait-for-broker"
    )
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "cannot reach broker" in line and f"127.0.0.1:{port}" in line
    assert "hunter2" not in result.stderr + result.stdout
    assert "****" in line


def test_port_in_use_exits_1_with_one_line(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_exporter(
            "--broker-url", redis_server.url(0), "--web.listen-address", f"127.0.0.1:{port}"
        )
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert lines and "cannot listen" in lines[0], result.stderr


def test_unreachable_broker_with_waiting_serves_health_and_reports_not_ready(procs) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, f"redis://127.0.0.1:{free_port()}/0").start(wait_ready=False)
    assert exporter.get("/healthz")[0] == 200
    assert exporter.get("/readyz")[0] == 503
    scrape = exporter.scrape()
    assert scrape.value("celery_exporter_broker_up") == 0
    assert exporter.process is not None and exporter.process.alive()


def test_every_flag_reads_its_env_var(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        "CELERY_BROKER_URL": redis_server.url(0),  # the fallback when the exporter's own is unset
        "CELERY_EXPORTER_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "CELERY_EXPORTER_QUEUES": "from_env",
        "CELERY_EXPORTER_VISIBILITY_TIMEOUT": "123",
        "CELERY_EXPORTER_INSPECT_INTERVAL": "0",
    }
    procs.start([PYTHON, "-m", "exporter"], "exporter-env", env=env)
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200,
               message="exporter configured by env")  # fmt: skip
    text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    assert 'celery_queue_length{queue_name="from_env"} 0' in text
    assert "celery_broker_visibility_timeout_seconds 123.0" in text


def test_bucket_lists_may_end_with_inf_as_the_peers_do() -> None:
    # danihodovic/celery-exporter's --buckets default is "0.005,...,7.5,10.0,inf": a list
    # copied from its --help must start ours; the +Inf bucket is implicit.
    from exporter.cli import _floats

    assert _floats(None, None, "0.005,0.5,10.0,inf") == (0.005, 0.5, 10.0)  # type: ignore[arg-type]
    assert _floats(None, None, "+Inf,1") == (1.0,)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--no-created-series"], {}),
        ([], {"CELERY_EXPORTER_CREATED_SERIES": "false"}),
        ([], {"PROMETHEUS_DISABLE_CREATED_SERIES": "True"}),  # prometheus_client's switch
    ],
)
def test_created_series_can_be_left_out(procs, redis_server, args, env) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0), args, env=env).start()
    default = ExporterProcess(procs, redis_server.url(0)).start()
    assert "celery_exporter_events_rejected_created" in default.scrape().samples  # by default
    scrape = exporter.scrape()
    assert "celery_exporter_events_rejected_total" in scrape.samples
    assert not [name for name in scrape.samples if name.endswith("_created")]
