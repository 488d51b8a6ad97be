"""The whole observable system on one machine, without Docker: ``scripts/stack``.

    scripts/stack                     # run everything until Ctrl-C (crashed parts restart)
    scripts/stack --fast              # alerts in seconds: for the fault tour and the tests
    scripts/stack fault kill-worker   # in another terminal: cause a fault, see what to watch
    scripts/stack status              # components, restarts, alerts delivered

The machinery lives in the ``stack`` package (supervision, faults, control socket, servers);
this file is the command line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stack import control  # noqa: E402
from stack.components import DEMO_FAILURE_RATIO, WORKERS, Options  # noqa: E402
from stack.faults import FAULTS, FLOOD_COUNT, FLOOD_JOBS  # noqa: E402
from stack.ports import Ports  # noqa: E402
from stack.run import DEFAULT_STATE  # noqa: E402

DEFAULT_PORTS = Ports()
STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="STACK_STATE_DIR",
    help="The stack's data, logs and control socket.  [default: var/stack]",
)


def resolve_state_dir(ctx: click.Context, given: Path | None) -> Path:
    """The subcommand's --state-dir, else the one given before it, else var/stack."""
    chosen = given or (ctx.find_root().params.get("state_dir"))
    return (chosen or DEFAULT_STATE).resolve()


def port_option(name: str) -> Any:
    return click.option(
        f"--{name}-port",
        type=click.IntRange(1, 65535),
        default=getattr(DEFAULT_PORTS, name),
        show_default=True,
        envvar=f"STACK_{name.upper()}_PORT",
        help={
            "webhook": "The stack's own server: Alertmanager's webhook and the runbooks.",
            "images": "Sample images for thumbnails (the docs' /thumb example uses it).",
        }.get(name, ""),
    )


def ports_options(command: Any) -> Any:
    for name in reversed([name for name, _ in DEFAULT_PORTS.items()]):
        command = port_option(name)(command)
    return command


@click.group(
    invoke_without_command=True,
    context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]},
)
@STATE_DIR
@click.option(
    "--rate",
    type=click.FloatRange(min=0.01),
    default=2.0,
    show_default=True,
    envvar="STACK_RATE",
    help="Traffic generator requests/s.",
)
@click.option(
    "--failure-ratio",
    type=click.FloatRange(0, 1),
    default=DEMO_FAILURE_RATIO,
    show_default=True,
    envvar="STACK_FAILURE_RATIO",
    help="Share of the traffic's reports and thumbnails made to fail or retry; the default "
    "stays far below the failure-ratio alert.",
)
@click.option(
    "--no-traffic", is_flag=True, envvar="STACK_NO_TRAFFIC", help="Start no traffic generator."
)
@click.option(
    "--fast",
    is_flag=True,
    envvar="STACK_FAST",
    help="Second-scale alert windows (alerts.settings.fast), 1 s scrapes, quick "
    "notifications: faults show their alerts in seconds. For the tour and the tests.",
)
@click.option(
    "--alert-setting",
    "alert_settings",
    multiple=True,
    metavar="KEY=VALUE",
    envvar="STACK_ALERT_SETTINGS",
    help="Override one alert setting of alerts/settings.py (repeatable; in the environment: "
    "space-separated).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=0.0,
    envvar="STACK_DURATION",
    help="Stop after this many seconds (0: run until Ctrl-C).",
)
@ports_options
@click.pass_context
def main(ctx: click.Context, **params: Any) -> None:
    """Run Redis, workers, beat, the API, traffic, the exporter, Prometheus and Alertmanager.

    Crashed components are restarted with backoff; one that crash-loops stops the stack
    with the end of its log. Faults on purpose: scripts/stack fault --help.
    """
    if ctx.invoked_subcommand is not None:
        return
    from alerts.settings import SettingsError, parse_assignments
    from stack.run import StackError, run

    ports = Ports(**{k.removesuffix("_port"): v for k, v in params.items() if k.endswith("_port")})
    opts = Options(
        state=resolve_state_dir(ctx, params["state_dir"]),
        ports=ports,
        stack_id=os.environ.get("CELERY_OBSERVATORY_STACK") or uuid.uuid4().hex[:12],
        rate=params["rate"],
        failure_ratio=params["failure_ratio"],
        traffic=not params["no_traffic"],
    )
    stop = threading.Event()
    # Ctrl-C, a kill, or the terminal closing: stop everything, leave nothing behind.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        overrides = parse_assignments(params["alert_settings"])
        run(opts, params["fast"], overrides, params["duration"], stop)
    except (StackError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Everything, as JSON.")
@click.pass_context
def status(ctx: click.Context, state_dir: Path | None, as_json: bool) -> None:
    """Components (pid, state, restarts) and the alerts Alertmanager delivered."""
    data = ask(resolve_state_dir(ctx, state_dir), {"command": "status"})
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for row in data["components"]:
        state = row["state"]
        if state == "held":
            state = f"down for {row['held_by']} ({row['held_for']:g} s)"
        elif state == "restarting":
            state = f"restarting in {row['restart_in']:g} s"
        click.echo(
            f"  {row['name']:<16} {state:<28} pid {row['pid'] or '-':<8} restarts {row['restarts']}"
        )
    click.echo(f"alerts firing: {', '.join(data['alerts']['firing']) or 'none'}")


def ask(state: Path, message: dict[str, Any]) -> Any:
    try:
        return control.request(state, message, click.echo)
    except control.NotRunning as exc:
        raise click.ClickException(str(exc)) from None
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def fault() -> None:
    """Cause a fault in the running stack; each says what to watch, and the stack heals.

    Start the stack first (in another terminal). With scripts/stack --fast the alerts fire
    in seconds instead of minutes. The README's "Tour" walks through all of them.
    """


SECONDS = click.option(
    "--seconds",
    type=click.FloatRange(min=1),
    default=None,
    help="Stay down exactly this long (default: until the fault's alert reached "
    "Alertmanager, within bounds).",
)


def fault_command(name: str, *options: Any) -> Any:
    def command(ctx: click.Context, state_dir: Path | None, **kwargs: Any) -> None:
        ask(
            resolve_state_dir(ctx, state_dir),
            {"command": "fault", "name": name, "options": kwargs},
        )

    command.__name__ = name.replace("-", "_")
    for option in reversed(options):
        command = option(command)
    command = STATE_DIR(click.pass_context(command))
    return fault.command(name, help=FAULTS[name].summary)(command)


fault_command(
    "kill-worker",
    click.option(
        "--worker",
        type=click.Choice([name for name, *_ in WORKERS]),
        default="email",
        show_default=True,
        help="Which worker to SIGKILL.",
    ),
    SECONDS,
)
fault_command("stop-redis", SECONDS)
fault_command(
    "flood",
    click.option(
        "--queue",
        type=click.Choice(list(FLOOD_JOBS)),
        default="email",
        show_default=True,
        help="The queue to flood, through the API endpoint that feeds it.",
    ),
    click.option(
        "--count",
        type=click.IntRange(1, 100_000),
        default=FLOOD_COUNT,
        show_default=True,
        help="How many jobs to send at once.",
    ),
)
fault_command("stop-beat", SECONDS)
fault_command(
    "slow-task",
    click.option(
        "--sleep",
        type=click.FloatRange(1, 60),
        default=60.0,
        show_default=True,
        help="Seconds the task sleeps (dummy_task allows 60 at most).",
    ),
)


if __name__ == "__main__":
    main(prog_name="scripts/stack")
