"""The docker-compose stack (compose/) is valid, complete, and wired to files that exist.

No Docker engine is needed: `docker-compose config` (Debian's 1.29) validates and resolves the
file, promtool and amtool check the Prometheus and Alertmanager configs it mounts, and the
Redis ACL users are tried against a real redis-server started with the stack's redis.conf.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from exporter.sources.redis_pubsub import event_pattern
from tests.support.acl_redis import AclRedisServer, adapt_to_local_redis, redis_version, render_acl
from tests.support.deploy_checks import (
    QUEUE_NODES,
    command_problems,
    console_scripts,
    option_value,
    worker_problems,
)
from tests.support.procs import (
    PYTHON,
    ROOT,
    CeleryWorker,
    ProcessTracker,
    RedisServer,
    celery_env,
    require_binary,
    wait_until,
)

COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
INSPECT_OVERRIDE = COMPOSE_DIR / "docker-compose.inspect.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
REDIS_DIR = COMPOSE_DIR / "redis"
PROJECT_IMAGE = "celery-observatory"
APP_USER = "10001:10001"
DASHBOARDS = ("celery-overview.json", "celery-task-detail.json", "celery-exporter-health.json")
RULES_IN_CONTAINER = "/etc/prometheus/rules/celery-observatory.rules.yml"
GRAFANA_DATASOURCE_UID = "prometheus"
# Every service a user gets from `up`, and the optional ones behind a profile.
SERVICES = {
    "redis", "api", "worker-cpu", "worker-io", "worker-email", "worker-default", "worker-dlq",
    "beat", "traffic", "exporter", "prometheus", "alertmanager", "grafana", "mail",
}  # fmt: skip
PROFILE_SERVICES = {"flower": {"flower"}}
PASSWORDS = {
    "REDIS_APP_PASSWORD": "app-test-pw",
    "REDIS_EXPORTER_PASSWORD": "exporter-test-pw",
    "REDIS_EXPORTER_INSPECT_PASSWORD": "inspect-test-pw",
}


def compose(*args: str, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> subprocess.CompletedProcess:
    argv = [require_binary("docker-compose", "docker-compose")]
    for path in files:
        argv += ["-f", str(path)]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def resolved_config(*args: str, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> dict[str, Any]:
    result = compose(*args, "config", files=files)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return resolved_config()


@pytest.fixture(scope="module")
def config_with_profiles() -> dict[str, Any]:
    profiles = [arg for name in PROFILE_SERVICES for arg in ("--profile", name)]
    return resolved_config(*profiles)


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount, in either of compose's syntaxes."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source", ""), volume["target"]
            if volume.get("type") not in (None, "bind"):
                continue
        if source.startswith("/"):
            mounts.append((Path(source), target))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a file the container reads at ``container_path`` comes from on the host."""
    for source, target in bind_mounts(service):
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    raise AssertionError(f"{container_path} is not inside any bind mount of the service")


def project_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in config["services"].items()
        if svc.get("image", "").split(":")[0] == PROJECT_IMAGE
    }


# --- the file as docker-compose sees it ------------------------------------------------------


def test_compose_config_validates_with_every_profile_and_override() -> None:
    for args, files in (
        ((), (COMPOSE_FILE,)),
        (("--profile", "flower"), (COMPOSE_FILE,)),
        ((), (COMPOSE_FILE, INSPECT_OVERRIDE)),
    ):
        result = compose(*args, "config", "--quiet", files=files)
        assert result.returncode == 0, f"{args} {files}: {result.stderr}"
        assert "WARNING" not in result.stderr, result.stderr


def test_default_services_and_profiles(config_with_profiles: dict[str, Any]) -> None:
    # docker-compose 1.29 lists profiled services in `config` too; `up` starts only those
    # without a profile, unless their profile is enabled.
    services = config_with_profiles["services"]
    default = {name for name, svc in services.items() if not svc.get("profiles")}
    assert default == SERVICES
    for profile, extra in PROFILE_SERVICES.items():
        assert {n for n, svc in services.items() if profile in svc.get("profiles", [])} == extra


def test_every_service_has_an_image_or_a_build_that_exists(
    config_with_profiles: dict[str, Any],
) -> None:
    for name, service in config_with_profiles["services"].items():
        assert service.get("image") or service.get("build"), f"{name}: no image and no build"
        build = service.get("build")
        if build:
            context = Path(build["context"])
            assert context == ROOT, f"{name}: build context {context} is not the repository"
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE
            # One image for all roles: every service that builds tags the same image.
            assert service["image"].split(":")[0] == PROJECT_IMAGE


def test_every_bind_mounted_host_path_exists(config_with_profiles: dict[str, Any]) -> None:
    checked = 0
    for name, service in config_with_profiles["services"].items():
        for source, target in bind_mounts(service):
            # A missing source would make Docker create an empty directory in its place.
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert source.resolve().is_relative_to(ROOT), f"{name}: {source} is outside the repo"
            checked += 1
    assert checked >= 6


def test_the_files_other_parts_of_the_project_provide_are_mounted(
    config: dict[str, Any],
) -> None:
    services = config["services"]
    rules = host_path(services["prometheus"], RULES_IN_CONTAINER)
    assert rules == ROOT / "alerts" / "celery-observatory.rules.yml"
    assert rules.is_file()
    am = host_path(services["alertmanager"], "/etc/alertmanager/alertmanager.yml")
    assert am == ROOT / "alerts" / "alertmanager.yml"
    assert am.is_file()
    for dashboard in DASHBOARDS:
        path = host_path(
            services["grafana"], f"/etc/grafana/dashboards/celery-observatory/{dashboard}"
        )
        assert path.is_file(), f"{path} is missing"


def test_long_running_services_have_healthchecks_and_wait_for_healthy_dependencies(
    config_with_profiles: dict[str, Any],
) -> None:
    services = config_with_profiles["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], f"{dependency} cannot become healthy"
    # Everything that talks to Redis waits until Redis answers as the app user.
    for name in ("api", "exporter", *(n for n in services if n.startswith("worker-"))):
        assert "redis" in services[name]["depends_on"], name


def test_ports_are_published_on_loopback_only(config_with_profiles: dict[str, Any]) -> None:
    published = 0
    for name, service in config_with_profiles["services"].items():
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else port.get("host_ip", "")
            assert str(text).startswith("127.0.0.1"), f"{name}: {port} is reachable from outside"
            published += 1
    assert published >= 6


# --- who runs what -----------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), grouped by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_runtime_stage_is_slim_non_root_and_without_build_tools() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    builder, runtime = stages[0], stages[-1]
    assert any('".[workload]"' in line and "pip wheel" in line for line in builder)
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    users = [line.split(None, 1)[1] for line in runtime if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"final USER {users[-1]} is not a fixed non-root UID"
    assert users[-1] == APP_USER
    for line in runtime:
        assert "apt-get install" not in line and "build-essential" not in line, line
        assert not line.upper().startswith("RUN PIP"), f"the runtime stage installs: {line}"


def test_dockerfile_copies_only_what_exists_and_is_in_the_build_context() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, ".dockerignore must exclude everything by default"
    copied = 0
    for stage in dockerfile_stages():
        for line in stage:
            words = line.split()
            if words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
                continue
            for source in words[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
                copied += 1
    assert copied >= 3


def test_project_services_run_as_the_non_root_app_user(
    config_with_profiles: dict[str, Any],
) -> None:
    services = project_services(config_with_profiles)
    assert set(services) >= {"api", "exporter", "traffic", "beat", *(f"worker-{q}" for q in
                             ("cpu", "io", "email", "default", "dlq"))}  # fmt: skip
    for name, service in services.items():
        assert service.get("user") == APP_USER, f"{name} runs as {service.get('user')!r}"
        assert service.get("read_only") is True, f"{name}: writable root filesystem"
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
    assert config_with_profiles["services"]["redis"]["user"] == "redis"
    assert config_with_profiles["services"]["flower"]["user"] not in ("0", "root", None)


def test_project_commands_exist_and_workers_follow_the_queue_contract(
    config: dict[str, Any],
) -> None:
    services = project_services(config)
    queues = set()
    for name, service in services.items():
        argv = service["command"]
        if name.startswith("worker-"):
            assert not worker_problems(argv), worker_problems(argv)
            queue = option_value(argv, "-Q")
            queues.add(queue)
            # The healthcheck pings this very worker's node name (Celery's %h is the
            # container's hostname; `$$` is compose's escape for a literal `$`).
            check = " ".join(service["healthcheck"]["test"])
            assert f"inspect ping -d {QUEUE_NODES[queue]}@$$HOSTNAME " in check, check
        else:
            assert not command_problems(argv), command_problems(argv)
    assert queues == set(QUEUE_NODES)


def test_console_script_flags_used_by_compose_are_accepted(config: dict[str, Any]) -> None:
    """Every --flag compose passes to one of our console scripts appears in its --help."""
    scripts = console_scripts()
    checked = 0
    for name, service in project_services(config).items():
        argv = service["command"]
        if argv[0] not in scripts:
            continue
        # The script as the virtualenv installed it from pyproject.toml, as the image does.
        program = Path(PYTHON).parent / argv[0]
        assert program.is_file(), f"{program} is not installed: run scripts/bootstrap"
        result = subprocess.run(
            [str(program), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, f"{name}: {argv[0]} --help failed:\n{result.stderr}"
        for flag in (arg.split("=")[0] for arg in argv[1:] if arg.startswith("--")):
            assert flag in result.stdout, f"{name}: {argv[0]} has no option {flag}"
            checked += 1
    assert checked >= 3


def test_beat_runs_once_with_its_schedule_on_the_tmpfs(config: dict[str, Any]) -> None:
    beat = config["services"]["beat"]
    argv = beat["command"]
    assert argv[:4] == ["celery", "-A", "workload.app", "beat"]
    assert not command_problems(argv)
    schedule = option_value(argv, "-s", "--schedule")
    # The root filesystem is read-only: beat must write its schedule file on a tmpfs.
    assert beat["read_only"] is True
    assert schedule and any(schedule.startswith(mount.rstrip("/") + "/") for mount in beat["tmpfs"])
    # Two schedulers would send every periodic task twice.
    assert beat.get("deploy", {}).get("replicas", 1) == 1 and "scale" not in beat
    assert beat["environment"]["CELERY_BROKER_URL"].startswith("redis://app:")
    assert "redis" in beat["depends_on"]


def beat_healthcheck(config: dict[str, Any], schedule_prefix: Path) -> list[str]:
    """compose's beat healthcheck, as argv, looking at ``schedule_prefix`` instead of /tmp."""
    kind, *argv = config["services"]["beat"]["healthcheck"]["test"]
    assert kind == "CMD" and argv[0] == "python"
    return [
        PYTHON,
        *(a.replace("/tmp/celerybeat-schedule", str(schedule_prefix)) for a in argv[1:]),
    ]


def test_beat_healthcheck_passes_for_a_running_beat_and_fails_for_a_stale_one(
    config: dict[str, Any], procs: ProcessTracker, redis_server: RedisServer, tmp_path: Path
) -> None:
    schedule = tmp_path / "celerybeat-schedule"
    check = beat_healthcheck(config, schedule)
    assert subprocess.run(check, check=False, timeout=30).returncode == 1  # no beat yet
    beat = procs.start(
        [PYTHON, "-m", "celery", "-A", "workload.app", "beat", "-s", str(schedule), "-l", "INFO"],
        "beat",
        env=celery_env(redis_server),
    )
    wait_until(lambda: list(tmp_path.glob("celerybeat-schedule*")), timeout=30,
               message=f"beat's schedule file\n{beat.log_text()}")  # fmt: skip
    assert subprocess.run(check, check=False, timeout=30).returncode == 0
    beat.stop()
    stale = time.time() - 11 * 60
    for path in tmp_path.glob("celerybeat-schedule*"):
        os.utime(path, (stale, stale))
    assert subprocess.run(check, check=False, timeout=30).returncode == 1


def test_compose_traffic_fails_as_little_as_the_local_stack_demo(config: dict[str, Any]) -> None:
    """One demo failure ratio: compose's default is the local stack's (stack.components)."""
    from stack.components import DEMO_FAILURE_RATIO

    traffic = config["services"]["traffic"]["command"]
    assert float(option_value(traffic, "--failure-ratio") or "nan") == DEMO_FAILURE_RATIO
    example = (COMPOSE_DIR / "env.example").read_text()
    assert f"TRAFFIC_FAILURE_RATIO={DEMO_FAILURE_RATIO:g}" in example


def test_exporter_connects_with_least_privilege_and_inspect_needs_the_override(
    config: dict[str, Any],
) -> None:
    exporter = config["services"]["exporter"]
    url = exporter["environment"]["CELERY_EXPORTER_BROKER_URL"]
    assert url.startswith("redis://exporter:"), url
    assert option_value(exporter["command"], "--inspect-interval") == "0"
    # No workload credentials in the exporter's environment.
    assert not any("app:" in str(v) for v in exporter["environment"].values())
    inspect = resolved_config(files=(COMPOSE_FILE, INSPECT_OVERRIDE))["services"]["exporter"]
    assert inspect["environment"]["CELERY_EXPORTER_BROKER_URL"].startswith(
        "redis://exporter-inspect:"
    )
    assert int(option_value(inspect["command"], "--inspect-interval") or 0) > 0


# --- Prometheus, Alertmanager, Grafana -----------------------------------------------------


def test_prometheus_config_passes_promtool_with_the_mounted_rules(
    config: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = config["services"]["prometheus"]
    config_path = host_path(prometheus, "/etc/prometheus/prometheus.yml")
    prom = yaml.safe_load(config_path.read_text())
    assert prom["rule_files"] == [RULES_IN_CONTAINER]
    # Lay the files out as the container sees them (under tmp_path), then check the config.
    for container_path in ("/etc/prometheus/prometheus.yml", *prom["rule_files"]):
        source = host_path(prometheus, container_path)
        assert source.is_file(), f"{container_path} <- {source}: missing"
        target = tmp_path / container_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    prom["rule_files"] = [str(tmp_path / p.lstrip("/")) for p in prom["rule_files"]]
    checked = tmp_path / "etc/prometheus/prometheus.yml"
    checked.write_text(yaml.safe_dump(prom))
    result = subprocess.run(
        [require_binary("promtool", "prometheus"), "check", "config", str(checked)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_scrapes_the_exporter_under_the_job_name_the_rules_use(
    config: dict[str, Any],
) -> None:
    prometheus = config["services"]["prometheus"]
    prom = yaml.safe_load(host_path(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    targets = [t for sc in jobs["celery-exporter"]["static_configs"] for t in sc["targets"]]
    assert targets == ["exporter:9808"]
    exporter = config["services"]["exporter"]
    assert exporter["environment"]["CELERY_EXPORTER_WEB_LISTEN_ADDRESS"] == ":9808"
    rules = host_path(prometheus, RULES_IN_CONTAINER).read_text()
    assert 'job="celery-exporter"' in rules
    alertmanagers = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]
    assert "alertmanager" in config["services"]


def test_alertmanager_config_passes_amtool(config: dict[str, Any]) -> None:
    path = host_path(config["services"]["alertmanager"], "/etc/alertmanager/alertmanager.yml")
    result = subprocess.run(
        [require_binary("amtool", "prometheus-alertmanager"), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def datasource_refs(node: Any) -> list[Any]:
    """Every value of a "datasource" key anywhere in a dashboard."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append(value)
            found += datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            found += datasource_refs(item)
    return found


def test_grafana_provisions_the_datasource_and_the_dashboards(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    datasources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == GRAFANA_DATASOURCE_UID
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in grafana["depends_on"]
    providers = yaml.safe_load((provisioning / "dashboards/celery-observatory.yml").read_text())
    (provider,) = providers["providers"]
    dashboards_dir = host_path(grafana, provider["options"]["path"])
    assert dashboards_dir == ROOT / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()
    for name in DASHBOARDS:
        dashboard = json.loads((dashboards_dir / name).read_text())
        assert dashboard.get("panels"), f"{name} has no panels"
        variables = {
            v["name"] for v in dashboard.get("templating", {}).get("list", [])
            if v.get("type") == "datasource"
        }  # fmt: skip
        for ref in datasource_refs(dashboard):
            uid = ref.get("uid") if isinstance(ref, dict) else ref
            if uid is None or uid in ("-- Grafana --", "grafana", "-- Mixed --", "__expr__"):
                continue
            if uid.startswith("$"):
                # A datasource variable: it must exist in the dashboard.
                assert uid.strip("${}") in variables, f"{name}: {uid} is not a variable"
            else:
                assert uid == GRAFANA_DATASOURCE_UID, f"{name}: unknown datasource {ref}"


# --- Redis: AOF and ACL users against a real redis-server -----------------------------------


def test_redis_runs_with_aof_and_the_acl_from_the_mounted_template(config: dict[str, Any]) -> None:
    redis_service = config["services"]["redis"]
    assert redis_service["image"].startswith("redis:7.")
    assert redis_service["entrypoint"] == ["sh", "/usr/local/etc/redis/start.sh"]
    for name in ("start.sh", "render-acl.sh", "users.acl", "redis.conf"):
        assert host_path(redis_service, f"/usr/local/etc/redis/{name}").is_file()
    conf = (REDIS_DIR / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.M)
    assert re.search(r"^maxmemory-policy noeviction$", conf, re.M)
    # The passwords the ACL needs are the ones the clients use.
    env = redis_service["environment"]
    assert set(env) == set(PASSWORDS)
    api_url = config["services"]["api"]["environment"]["CELERY_BROKER_URL"]
    assert api_url == f"redis://app:{env['REDIS_APP_PASSWORD']}@redis:6379/0"
    exporter_url = config["services"]["exporter"]["environment"]["CELERY_EXPORTER_BROKER_URL"]
    assert exporter_url == f"redis://exporter:{env['REDIS_EXPORTER_PASSWORD']}@redis:6379/0"


def test_acl_render_stores_only_hashes_and_refuses_a_missing_password(tmp_path: Path) -> None:
    output = tmp_path / "users.acl"
    result = render_acl(REDIS_DIR / "render-acl.sh", REDIS_DIR / "users.acl", output, PASSWORDS)
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert oct(output.stat().st_mode & 0o777) == "0o600"
    for password in PASSWORDS.values():
        assert password not in text
        assert "#" + hashlib.sha256(password.encode()).hexdigest() in text
    assert all(line.startswith("user ") for line in text.splitlines())

    missing = dict(PASSWORDS)
    del missing["REDIS_EXPORTER_PASSWORD"]
    bad = tmp_path / "bad.acl"
    result = render_acl(REDIS_DIR / "render-acl.sh", REDIS_DIR / "users.acl", bad, missing)
    assert result.returncode != 0
    assert "REDIS_EXPORTER_PASSWORD" in result.stderr
    assert not bad.exists()


@pytest.fixture
def acl_redis(procs: ProcessTracker, tmp_path: Path) -> AclRedisServer:
    """redis-server with compose's redis.conf and ACL, plus a test-only `admin` user.

    The admin user exists only here, to ask the server itself (ACL GETUSER, ACL DRYRUN)
    what the project's users may do.
    """
    rendered = tmp_path / "rendered.acl"
    result = render_acl(REDIS_DIR / "render-acl.sh", REDIS_DIR / "users.acl", rendered, PASSWORDS)
    assert result.returncode == 0, result.stderr
    acl = adapt_to_local_redis(rendered.read_text(), redis_version())
    aclfile = tmp_path / "users.acl"
    aclfile.write_text(acl + "user admin on >admin-test-pw ~* &* +@all\n")
    return AclRedisServer(
        procs, tmp_path / "redis", REDIS_DIR / "redis.conf", aclfile,
        "app", PASSWORDS["REDIS_APP_PASSWORD"],
    ).start()  # fmt: skip


def write_commands(admin: redis.Redis) -> list[tuple[str, int]]:
    """(name, arity) of every command and subcommand the server flags as a write."""
    found = []
    for name, info in admin.command().items():
        if "write" in info["flags"]:
            found.append((name, info["arity"]))
        # Subcommands come unparsed: [name, arity, flags, ...] with bytes.
        for sub in info.get("subcommands") or []:
            if b"write" in sub[2]:
                found.append((sub[0].decode(), sub[1]))
    return found


def dry_run(admin: redis.Redis, user: str, command: str, arity: int, key: str) -> str:
    """ACL DRYRUN of ``command`` on ``key``; 'OK' when the user would be allowed."""
    words = command.split("|")
    args = [*words, key]
    args += ["0"] * max(0, abs(arity) - len(args))
    try:
        reply = admin.execute_command("ACL", "DRYRUN", user, *args)
    except redis.ResponseError as exc:
        return f"error: {exc}"
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def test_default_user_is_off(acl_redis: AclRedisServer) -> None:
    with pytest.raises(redis.AuthenticationError):
        acl_redis.login(None, None).ping()
    with pytest.raises(redis.AuthenticationError):
        acl_redis.login("app", "wrong-password").ping()
    assert acl_redis.client().ping()


def test_exporter_users_cannot_write_any_queue(acl_redis: AclRedisServer) -> None:
    admin = acl_redis.login("admin", "admin-test-pw")
    writes = write_commands(admin)
    assert len(writes) > 50, "the server reported suspiciously few write commands"
    for user in ("exporter", "exporter-inspect"):
        for key in ("cpu", "default", "_kombu.binding.cpu", "unacked", "anything"):
            allowed = [
                cmd for cmd, arity in writes if dry_run(admin, user, cmd, arity, key) == "OK"
            ]
            assert not allowed, f"{user} may run {allowed} on {key!r}"
    # The exporter user's key patterns are all read-only and it has no write command at all.
    info = admin.acl_getuser("exporter")
    assert info["keys"] and all(pattern.startswith("%R~") for pattern in info["keys"])
    assert info["categories"] == ["-@all"]
    granted = {command.lstrip("+") for command in info["commands"]}
    assert {"llen", "lindex", "psubscribe"} <= granted
    write_names = {cmd for cmd, _ in writes}
    assert not write_names & granted, write_names & granted
    # exporter-inspect may write only its own pidbox reply queue and binding bookkeeping.
    reply_key = "4f0c7a3e.reply.celery.pidbox"
    assert dry_run(admin, "exporter-inspect", "del", -2, reply_key) == "OK"
    assert dry_run(admin, "exporter", "del", -2, reply_key) != "OK"


def test_exporter_user_reads_queues_and_subscribes_to_events_only(
    acl_redis: AclRedisServer,
) -> None:
    app = acl_redis.client()
    app.rpush("cpu", "message")
    app.sadd("_kombu.binding.cpu", "cpu\x06\x16\x06\x16cpu")
    app.set("secret-data", "x")
    exporter = acl_redis.login("exporter", PASSWORDS["REDIS_EXPORTER_PASSWORD"])
    assert exporter.llen("cpu") == 1
    assert exporter.lindex("cpu", 0) == b"message"
    assert exporter.hlen("unacked") == 0
    assert exporter.zrange("unacked_index", 0, 0) == []
    assert exporter.smembers("_kombu.binding.cpu")
    assert exporter.type("cpu") == b"list"
    exporter.scan(0)
    for attempt in (
        lambda: exporter.rpush("cpu", "forged"),
        lambda: exporter.delete("cpu"),
        lambda: exporter.get("secret-data"),
        lambda: exporter.llen("secret-data"),
        lambda: exporter.publish("/0.celeryev/task.sent", "{}"),
        lambda: exporter.config_get("*"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert app.llen("cpu") == 1

    # The pattern the exporter itself subscribes to (Redis compares patterns literally).
    pubsub = exporter.pubsub()
    pubsub.psubscribe(event_pattern(0))
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    app.publish("/0.celeryev/worker.heartbeat", "beat")
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["data"] == b"beat"
    pubsub.close()
    denied = exporter.pubsub()
    with pytest.raises(redis.exceptions.NoPermissionError):
        denied.psubscribe("/*.celery.pidbox")
        denied.get_message(timeout=5)
    denied.close()


def celery_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "celery", "-A", "workload.app", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_workload_runs_as_app_user_and_only_exporter_inspect_may_inspect(
    acl_redis: AclRedisServer, procs: ProcessTracker
) -> None:
    """A real worker and producer as `app`; broadcast inspect as the exporter's users."""
    app_env = {
        "CELERY_BROKER_URL": acl_redis.url_for("app", PASSWORDS["REDIS_APP_PASSWORD"], 0),
        "CELERY_RESULT_BACKEND": acl_redis.url_for("app", PASSWORDS["REDIS_APP_PASSWORD"], 1),
        "PYTHONUNBUFFERED": "1",
    }
    worker = CeleryWorker(procs, app_env, queues=("default",), nodename="default@acl-test")
    worker.start()
    send = (
        "from workload.tasks import dummy_task; "
        "print(dummy_task.apply_async((41,), queue='default').get(timeout=30))"
    )
    result = subprocess.run(
        [PYTHON, "-c", send],
        env={**os.environ, **app_env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "41"

    inspect_env = {
        "CELERY_BROKER_URL": acl_redis.url_for(
            "exporter-inspect", PASSWORDS["REDIS_EXPORTER_INSPECT_PASSWORD"]
        )
    }
    node = ("-d", "default@acl-test", "-t", "5")
    answer = celery_cli(inspect_env, "inspect", "active_queues", *node)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "'name': 'default'" in answer.stdout
    exporter_env = {
        "CELERY_BROKER_URL": acl_redis.url_for("exporter", PASSWORDS["REDIS_EXPORTER_PASSWORD"])
    }
    refused = celery_cli(exporter_env, "inspect", "ping", *node)
    assert refused.returncode != 0
    assert "permission" in (refused.stdout + refused.stderr).lower()
