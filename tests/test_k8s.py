"""The Kubernetes manifests (k8s/) are valid and wired together, without a cluster.

kubectl and kustomize are not needed: the test reads k8s/kustomization.yaml itself, validates
every core object with kubernetes-validate (strict, against a fixed Kubernetes version), and
checks the CRD objects (ServiceMonitor, PrometheusRule, ScaledObject) structurally: required
fields, selectors that select what they should, rules equal to alerts/, PromQL that parses.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, validate

from tests.support.deploy_checks import QUEUE_NODES, command_problems, option_value
from tests.support.deploy_checks import worker_problems as contract_worker_problems
from tests.support.procs import PYTHON, ROOT, require_binary

K8S = ROOT / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
RULES_FILE = ROOT / "alerts" / "celery-observatory.rules.yml"
DOCKERFILE = ROOT / "compose" / "Dockerfile"
# A version the installed kubernetes-validate carries schemas for (it has 1.25 ... 1.37).
KUBERNETES_VERSION = "1.30.0"
CRD_GROUPS = {"monitoring.coreos.com", "keda.sh"}
PROJECT_IMAGE = "celery-observatory"
EXPORTER_SERVICE = "celery-exporter"
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}


def kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def load_resources() -> list[tuple[str, dict[str, Any]]]:
    """(file, object) for every document of every file kustomization.yaml lists."""
    objects = []
    for entry in kustomization()["resources"]:
        path = K8S / entry
        assert path.is_file(), f"kustomization.yaml lists {entry}, which does not exist"
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects.append((entry, doc))
    return objects


@pytest.fixture(scope="module")
def resources() -> list[tuple[str, dict[str, Any]]]:
    return load_resources()


def of_kind(resources: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in resources if obj["kind"] == kind]


def by_name(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects}


def group_of(obj: dict[str, Any]) -> str:
    api_version = obj["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def workloads(resources: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [obj for _, obj in resources if obj["kind"] in WORKLOAD_KINDS]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def generator_names(kind: str) -> set[str]:
    key = "configMapGenerator" if kind == "ConfigMap" else "secretGenerator"
    return {gen["name"] for gen in kustomization().get(key, [])}


# --- the kustomization and the generated files ---------------------------------------------


def test_kustomization_lists_existing_files_and_generators(resources: list) -> None:
    k = kustomization()
    assert k["kind"] == "Kustomization"
    assert len(resources) >= 15
    for generator in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for entry in generator.get("files", []) + generator.get("envs", []):
            path = K8S / entry.split("=")[-1]
            assert path.is_file(), f"generator {generator['name']}: {entry} does not exist"
            assert path.resolve().is_relative_to(K8S), f"kustomize cannot load {entry}"
    (namespace,) = of_kind(resources, "Namespace")
    assert namespace["metadata"]["name"] == k["namespace"]
    assert {image["name"] for image in k["images"]} == {PROJECT_IMAGE}


def test_generated_files_are_up_to_date() -> None:
    result = subprocess.run(
        [PYTHON, str(K8S / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_generate_check_notices_a_stale_file(tmp_path: Path) -> None:
    """--check must fail when a generated file differs (here: one edited by hand)."""
    target = K8S / "generated" / "autoscaling.yaml"
    original = target.read_text()
    try:
        target.write_text(original.replace("maxReplicaCount: 10", "maxReplicaCount: 11", 1))
        result = subprocess.run(
            [PYTHON, str(K8S / "generate.py"), "--check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        target.write_text(original)
    assert result.returncode == 1
    assert "k8s/generated/autoscaling.yaml is out of date" in result.stderr


# --- core kinds against the Kubernetes schemas ------------------------------------------------


def test_core_objects_validate_strictly(resources: list) -> None:
    validated = set()
    for entry, obj in resources:
        if group_of(obj) in CRD_GROUPS:
            continue
        try:
            validate(obj, KUBERNETES_VERSION, strict=True)
        except ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{entry}: {obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            pytest.fail(f"{entry}: {exc.message}")
        validated.add(obj["kind"])
    assert validated >= {
        "Namespace", "Service", "StatefulSet", "Deployment", "NetworkPolicy",
    }  # fmt: skip


def test_strict_validation_catches_a_misspelt_field(resources: list) -> None:
    """The validator is not a rubber stamp: a typo in a Deployment is refused."""
    deployment = copy.deepcopy(of_kind(resources, "Deployment")[0])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessprobe"] = container.pop("livenessProbe")
    with pytest.raises(ValidationError):
        validate(deployment, KUBERNETES_VERSION, strict=True)


# --- pods: probes, security, resources, commands -------------------------------------------


UNITS = {"": 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}


def quantity(value: str | int) -> float:
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match[2] in UNITS, f"unreadable quantity {value!r}"
    return float(match[1]) * UNITS[match[2]]


def test_every_container_has_probes_resources_and_a_locked_down_security_context(
    resources: list,
) -> None:
    for workload in workloads(resources):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod.get("automountServiceAccountToken") is False, name
        # Else Kubernetes injects CELERY_EXPORTER_PORT=tcp://... and REDIS_PORT=... variables
        # that the exporter's env-var configuration would read.
        assert pod.get("enableServiceLinks") is False, name
        pod_security = pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] != 0, name
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            assert "livenessProbe" in container, f"{where}: no liveness probe"
            if container.get("ports"):
                # Behind a Service: traffic only once ready.
                assert "readinessProbe" in container, f"{where}: no readiness probe"
            port_names = {p["name"] for p in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                check = container.get(probe, {})
                for handler in ("httpGet", "tcpSocket"):
                    if handler in check:
                        assert check[handler]["port"] in port_names, f"{where}: {probe} port"
                if "httpGet" in check:
                    assert check["httpGet"]["path"] in ("/healthz", "/readyz"), where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            for resource in ("cpu", "memory"):
                assert quantity(requests[resource]) <= quantity(limits[resource]), where
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"] for v in pod.get("volumes", [])} | {
                t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
            }
            assert mounts <= volumes, f"{where}: mounts {mounts - volumes} have no volume"


def test_http_probes_use_the_exporter_and_api_health_endpoints(resources: list) -> None:
    deployments = by_name(of_kind(resources, "Deployment"))
    for name in ("api", EXPORTER_SERVICE):
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", DOCKERFILE.read_text(), flags=re.M)
    assert users, "compose/Dockerfile sets no numeric USER"
    return int(users[-1])


def project_containers(resources: list) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (workload, container)
        for workload in workloads(resources)
        for container in containers(workload)
        if container["image"].split(":")[0] == PROJECT_IMAGE
    ]


def test_project_pods_run_the_image_user_and_commands_that_exist(resources: list) -> None:
    uid = dockerfile_uid()
    found = project_containers(resources)
    assert len(found) >= 7
    for workload, container in found:
        name = workload["metadata"]["name"]
        pod_security = workload["spec"]["template"]["spec"]["securityContext"]
        assert pod_security["runAsUser"] == uid, f"{name}: runs as {pod_security['runAsUser']}"
        problems = command_problems(container["command"])
        assert not problems, f"{name}: {problems}"
        # The root filesystem is read-only; /tmp must be a writable volume.
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), name


def worker_queue(deployment: dict[str, Any]) -> str:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    queue = option_value(container["command"], "-Q", "--queues")
    assert queue is not None
    return queue


def worker_deployments(resources: list) -> dict[str, dict[str, Any]]:
    return {
        obj["metadata"]["name"]: obj
        for obj in of_kind(resources, "Deployment")
        if "worker" in obj["spec"]["template"]["spec"]["containers"][0]["command"]
    }


def test_one_worker_deployment_per_queue_following_the_contract(resources: list) -> None:
    workers = worker_deployments(resources)
    queues = [worker_queue(deployment) for deployment in workers.values()]
    assert sorted(queues) == sorted(QUEUE_NODES)
    for name, deployment in workers.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        problems = contract_worker_problems(container["command"])
        assert not problems, f"{name}: {problems}"
        ping = " ".join(container["livenessProbe"]["exec"]["command"])
        assert f"inspect ping -d {QUEUE_NODES[worker_queue(deployment)]}@$HOSTNAME" in ping
        # acks_late: a warm shutdown needs time to finish the running task.
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def env_references(container: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every ConfigMap/Secret a container reads."""
    refs = []
    for env in container.get("env", []):
        source = env.get("valueFrom", {})
        if "secretKeyRef" in source:
            refs.append(("Secret", source["secretKeyRef"]["name"]))
        if "configMapKeyRef" in source:
            refs.append(("ConfigMap", source["configMapKeyRef"]["name"]))
    for env_from in container.get("envFrom", []):
        if "configMapRef" in env_from:
            refs.append(("ConfigMap", env_from["configMapRef"]["name"]))
        if "secretRef" in env_from:
            refs.append(("Secret", env_from["secretRef"]["name"]))
    return refs


def secret_keys() -> set[str]:
    keys = set()
    for generator in kustomization()["secretGenerator"]:
        for entry in generator.get("envs", []):
            for line in (K8S / entry).read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    keys.add(line.split("=", 1)[0])
    return keys


def test_every_configmap_and_secret_a_pod_uses_is_generated(resources: list) -> None:
    known = {kind: generator_names(kind) for kind in ("ConfigMap", "Secret")}
    keys = secret_keys()
    for workload in workloads(resources):
        pod = workload["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in known["ConfigMap"], volume
        for container in containers(workload):
            for kind, name in env_references(container):
                assert name in known[kind], f"{workload['metadata']['name']}: {kind} {name}"
            defined: set[str] = set()
            for env in container.get("env", []):
                key = env.get("valueFrom", {}).get("secretKeyRef", {}).get("key")
                assert key is None or key in keys, f"secret key {key} is not generated"
                # $(VAR) only expands variables defined earlier in the same list.
                for ref in re.findall(r"\$\(([A-Z0-9_]+)\)", env.get("value", "")):
                    assert ref in defined, f"{env['name']} uses $({ref}) before it is defined"
                defined.add(env["name"])


def test_redis_keeps_its_data_and_renders_the_acl_at_start(resources: list) -> None:
    (redis,) = of_kind(resources, "StatefulSet")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("redis:7.")
    assert container["command"] == ["sh", "/usr/local/etc/redis/start.sh"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert mounts["config"] == "/usr/local/etc/redis"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    (config_generator,) = [
        g for g in kustomization()["configMapGenerator"] if g["name"] == "redis-config"
    ]
    files = {Path(f).name for f in config_generator["files"]}
    assert files == {"start.sh", "render-acl.sh", "users.acl", "redis.conf"}
    redis_conf = (K8S / "generated" / "redis" / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", redis_conf, re.M)
    acl = (K8S / "generated" / "redis" / "users.acl").read_text()
    placeholders = set(re.findall(r"@([A-Z0-9_]+)@", re.sub(r"(?m)^#.*$", "", acl)))
    env_names = {env["name"] for env in container["env"]}
    assert placeholders and placeholders <= env_names <= secret_keys()


# --- Services, NetworkPolicy and the CRD objects ------------------------------------------------


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def test_services_select_exactly_one_workload_and_its_named_ports(resources: list) -> None:
    for service in of_kind(resources, "Service"):
        name = service["metadata"]["name"]
        selected = [w for w in workloads(resources) if selects(service["spec"]["selector"],
                                                               pod_labels(w))]  # fmt: skip
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        ports = {p["name"] for c in containers(selected[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port {port}"
        # Workload selectors must match their own pod labels too.
        spec = selected[0]["spec"]
        assert selects(spec["selector"]["matchLabels"], pod_labels(selected[0]))


def test_network_policy_admits_every_redis_client(resources: list) -> None:
    (policy,) = of_kind(resources, "NetworkPolicy")
    (redis,) = of_kind(resources, "StatefulSet")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis))
    (rule,) = policy["spec"]["ingress"]
    expressions = rule["from"][0]["podSelector"]["matchExpressions"]
    for workload, _ in project_containers(resources):
        labels = pod_labels(workload)
        for expression in expressions:
            assert expression["operator"] == "In"
            assert labels.get(expression["key"]) in expression["values"], (
                f"{workload['metadata']['name']} could not reach Redis"
            )


def test_service_monitor_scrapes_the_exporter_as_the_job_the_rules_use(resources: list) -> None:
    (monitor,) = of_kind(resources, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [
        s for s in of_kind(resources, "Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]  # fmt: skip
    assert [s["metadata"]["name"] for s in selected] == [EXPORTER_SERVICE]
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert monitor["spec"]["endpoints"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
    # Without jobLabel, the Prometheus Operator uses the Service name as `job`.
    assert "jobLabel" not in monitor["spec"]
    assert f'job="{EXPORTER_SERVICE}"' in RULES_FILE.read_text()


def promtool_check_rules(groups: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run(
        [require_binary("promtool", "prometheus"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_carries_exactly_the_rules_file(resources: list, tmp_path: Path) -> None:
    (rule,) = of_kind(resources, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"]
    expected = yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert rule["spec"]["groups"] == expected
    assert any("alert" in r for group in rule["spec"]["groups"] for r in group["rules"])
    promtool_check_rules(rule["spec"]["groups"], tmp_path)


def test_every_worker_scales_on_its_queues_drain_time_and_busy_slots(
    resources: list, tmp_path: Path
) -> None:
    """Two triggers per worker, on its own queue: the drain time (how long a task sent now
    waits: Value semantics, +Inf capped) and busy pool slots (AverageValue per replica)."""
    workers = worker_deployments(resources)
    scaled = of_kind(resources, "ScaledObject")
    assert sorted(s["spec"]["scaleTargetRef"]["name"] for s in scaled) == sorted(workers)
    (rule,) = of_kind(resources, "PrometheusRule")
    records = {r["record"] for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r}
    queries = []
    for scaled_object in scaled:
        assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled_object["spec"]
        target = workers[spec["scaleTargetRef"]["name"]]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        triggers = {trigger["name"]: trigger for trigger in spec["triggers"]}
        assert set(triggers) == {"drain-time", "busy-slots"}
        assert triggers["drain-time"]["metricType"] == "Value"
        assert triggers["busy-slots"]["metricType"] == "AverageValue"
        assert (
            "queue_name:celery_queue_drain_time_seconds:rate5m"
            in (triggers["drain-time"]["metadata"]["query"])
        )
        assert "clamp_max(" in triggers["drain-time"]["metadata"]["query"]  # +Inf is an error
        concurrency = int(option_value(target["spec"]["template"]["spec"]["containers"][0]
                                       ["command"], "-c", "--concurrency"))  # fmt: skip
        assert 0 < float(triggers["busy-slots"]["metadata"]["threshold"]) <= concurrency
        for trigger in triggers.values():
            assert trigger["type"] == "prometheus"
            metadata = trigger["metadata"]
            assert metadata["serverAddress"].startswith("http")
            assert float(metadata["threshold"]) > 0
            assert metadata["ignoreNullValues"] == "false"
            query = metadata["query"]
            assert f'queue_name="{worker_queue(target)}"' in query
            assert f'job="{EXPORTER_SERVICE}"' in query
            # The recording rules it reads are in the PrometheusRule.
            used = set(re.findall(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", query))
            assert used and used <= records, used - records
            queries.append(query)
    # The queries are PromQL Prometheus accepts.
    groups = [{"name": "keda", "rules": [{"record": f"keda:q{i}", "expr": q}
                                          for i, q in enumerate(queries)]}]  # fmt: skip
    promtool_check_rules(groups, tmp_path)


def test_the_exporter_runs_two_replicas_on_different_nodes(resources: list) -> None:
    """High availability: the rules and dashboards deduplicate replicas, so two exporters
    are safe (tests/test_alerts_ha.py proves it live) and a node loss blinds nothing."""
    exporter = by_name(of_kind(resources, "Deployment"))[EXPORTER_SERVICE]
    assert exporter["spec"]["replicas"] == 2
    assert exporter["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = exporter["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert selects(spread["labelSelector"]["matchLabels"], pod_labels(exporter))
    (container,) = pod["containers"]
    # Autoscaled pods never come back under their old name: forget them within the hour.
    assert option_value(container["command"], "--worker-forget-after") == "3600"


def test_the_documented_hpa_alternative_is_a_valid_hpa_for_a_worker(resources: list) -> None:
    """docs/deploy.md's HPA example validates and targets a real worker Deployment."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    hpas = [
        doc for block in blocks for doc in yaml.safe_load_all(block)
        if isinstance(doc, dict) and doc.get("kind") == "HorizontalPodAutoscaler"
    ]  # fmt: skip
    assert hpas, "docs/deploy.md has no HorizontalPodAutoscaler example"
    workers = worker_deployments(resources)
    for hpa in hpas:
        validate(hpa, KUBERNETES_VERSION, strict=True)
        target = workers[hpa["spec"]["scaleTargetRef"]["name"]]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["external"]["metric"]["name"] == "celery_queue_length"
        selector = metric["external"]["metric"]["selector"]["matchLabels"]
        assert selector == {"queue_name": worker_queue(target)}
