"""runbook_url opens: the local stack's and compose's rules link to a runbook server that
serves alerts/runbooks, and a firing alert's link, taken from a real Prometheus, answers 200.

The committed rules link to this repository's published runbooks (PROJECT_RUNBOOKS_URL,
the setting's default, which users replace with their own); that URL is checked for its
shape in test_alerts_rules.py, as the tests have no internet access.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from alerts.configs import COMPOSE_RUNBOOKS_URL, stack_rules
from alerts.generate import render_rules, to_yaml
from alerts.runbook_server import RUNBOOKS_DIR, RunbookServer
from alerts.settings import DEFAULTS, fast, with_overrides
from tests.support.procs import ROOT, ProcessTracker, free_port, wait_until
from tests.support.prom import Prometheus

COMPOSE_RULES = ROOT / "compose" / "prometheus" / "celery-observatory.rules.yml"


def runbook_urls(groups: dict) -> dict[str, str]:
    return {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for group in groups["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_stack_rules_link_every_alert_to_a_page_the_server_serves() -> None:
    with RunbookServer() as server:
        rules = stack_rules(server.base_url)
        assert to_yaml(rules) == render_rules(
            with_overrides(DEFAULTS, {"runbook_base_url": server.base_url})
        )
        urls = runbook_urls(rules)
        assert len(urls) >= 20
        for alert, url in urls.items():
            response = requests.get(url, timeout=5)
            assert response.status_code == 200, url
            assert response.text.startswith(f"# {alert}\n")
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_a_firing_alerts_runbook_url_opens(procs: ProcessTracker, tmp_path: Path) -> None:
    """The whole path: Prometheus renders the annotation, and the link answers 200."""
    with RunbookServer() as server:
        settings = with_overrides(fast(), {"runbook_base_url": server.base_url})
        # Nothing listens on the target: the exporter is down, CeleryExporterDown fires.
        target = f"127.0.0.1:{free_port()}"
        prometheus = Prometheus(procs, tmp_path / "prom", [target], settings).start()

        def firing() -> list[dict]:
            return [
                a for a in prometheus.alert_states("CeleryExporterDown") if a["state"] == "firing"
            ]

        (alert,) = wait_until(firing, timeout=30, message="CeleryExporterDown firing")
        url = alert["annotations"]["runbook_url"]
        assert url == f"{server.base_url}/CeleryExporterDown.md"
        response = requests.get(url, timeout=5)
        assert response.status_code == 200
        assert "## Diagnose" in response.text


@pytest.mark.parametrize(
    "path", ["/", "/runbooks/", "/../settings.py", "/%2e%2e/settings.py", "/NoSuchAlert.md"]
)
def test_the_server_serves_runbook_pages_and_nothing_else(path: str) -> None:
    with RunbookServer() as server:
        assert requests.get(server.base_url + path, timeout=5).status_code == 404
        assert requests.get(server.base_url + "/README.md", timeout=5).status_code == 200


def test_compose_rules_link_to_the_runbook_server_compose_runs(
    procs: ProcessTracker, tmp_path: Path
) -> None:
    """The compose copy of the rules links to COMPOSE_RUNBOOKS_URL; the server script runs
    as compose runs it, without the project installed (python -S: no site-packages)."""
    rules = yaml.safe_load(COMPOSE_RULES.read_text())
    committed = yaml.safe_load((ROOT / "alerts" / "celery-observatory.rules.yml").read_text())
    assert rules["groups"] != committed["groups"]  # only the links differ:
    urls = runbook_urls(rules)
    assert urls.keys() == runbook_urls(committed).keys()
    assert all(url.startswith(COMPOSE_RUNBOOKS_URL + "/") for url in urls.values())

    port = free_port()
    copy = tmp_path / "runbook_server.py"  # what compose mounts: the file alone
    copy.write_text((ROOT / "alerts" / "runbook_server.py").read_text())
    argv = [sys.executable, "-S", str(copy), "--listen", f"127.0.0.1:{port}",
            "--directory", str(RUNBOOKS_DIR)]  # fmt: skip
    server = procs.start(argv, "runbook-server")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not server.alive():
            raise AssertionError(server.log_text())
        try:
            return requests.get(base + "/README.md", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, timeout=20, message="runbook server script answering")
    for url in urls.values():
        assert requests.get(base + urlsplit(url).path, timeout=5).status_code == 200, url


def test_the_server_script_refuses_bad_arguments_in_one_line() -> None:
    script = str(ROOT / "alerts" / "runbook_server.py")
    for args, message in (
        (["--listen", "nowhere"], "--listen expects host:port"),
        (["--directory", "/nonexistent"], "is not a directory"),
    ):
        result = subprocess.run(
            [sys.executable, script, *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2
        assert message in result.stderr and "Traceback" not in result.stderr
