"""The compose stack, validated without a Docker engine, then run as local processes with the very
config files the compose mounts (hosts and paths substituted)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import requests
import yaml

from conftest import BIN, EXPORTER, MlflowServer, child_env, free_port, wait_http
from test_alerts import tool

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def defaults(text: str) -> str:
    """${VAR:-default} -> default, as compose does with no .env."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def test_compose_file_is_valid_and_the_dockerfile_lints_clean():
    schema = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    lint = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10150" in dockerfile and "HEALTHCHECK" in dockerfile and "EXPOSE 10150" in dockerfile
    assert dockerfile.count("FROM ") == 2  # multi-stage: no build tools in the final image


def test_every_mounted_file_exists_and_nothing_secret_is_committed():
    for name, service in SERVICES.items():
        for volume in map(defaults, service.get("volumes", [])):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                assert volume.endswith(":ro"), f"{name} mounts {source} writable"
        if "image" in service and "build" not in service:
            assert re.search(r":v?\d+\.\d+\.\d+$", service["image"]), f"{name}: pin the image version"
        assert service.get("healthcheck") or name in ("exporter",) or service.get("profiles"), name
    for secret in COMPOSE["secrets"].values():
        assert (ROOT / defaults(secret["file"])).is_file()
    assert "GRAFANA_ADMIN_PASSWORD:?" in (ROOT / "docker-compose.yml").read_text()  # no default password
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and (ROOT / ".env.example").is_file()


def test_names_ports_and_urls_agree_across_the_stack():
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    ops = yaml.safe_load((ROOT / "deploy/monitoring.yml").read_text())
    datasource = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/mlops.yml").read_text())["providers"][0]
    alertmanager = yaml.safe_load((ROOT / "alerts/alertmanager.yml").read_text())

    def container_port(service: str) -> int:
        return int(defaults(SERVICES[service]["ports"][0]).split(":")[1])

    jobs = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prometheus["scrape_configs"]}
    assert jobs[ops["job"]] == f"exporter:{container_port('exporter')}"
    assert ops["datasource_uid"] == datasource["uid"]
    assert ops["exporter_url"] == f"http://localhost:{defaults(SERVICES['exporter']['ports'][0]).split(':')[0]}"
    assert jobs["alertmanager"] == f"alertmanager:{container_port('alertmanager')}"
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [jobs["alertmanager"]]
    assert datasource["url"] == f"http://prometheus:{container_port('prometheus')}"
    rules_mount = next(v for v in SERVICES["prometheus"]["volumes"] if v.startswith("./alerts/rules.yml"))
    assert Path(rules_mount.split(":")[1]).parent.as_posix() + "/*.yml" == prometheus["rule_files"][0]
    assert any(v.split(":")[1] == provider["options"]["path"] for v in SERVICES["grafana"]["volumes"])
    assert any(v.split(":")[1] == "/etc/grafana/provisioning" for v in SERVICES["grafana"]["volumes"])
    for receiver in alertmanager["receivers"]:
        for config in sum((v for k, v in receiver.items() if k.endswith("_configs")), []):
            for key, path in config.items():
                if key.endswith("_file"):
                    assert path.startswith("/run/secrets/") and path.rsplit("/", 1)[1] in COMPOSE["secrets"]
    mlflow_port = SERVICES["mlflow"]["command"][SERVICES["mlflow"]["command"].index("--port") + 1]
    for name in ("exporter.yml", "exporter-demo.yml"):
        config = yaml.safe_load((ROOT / "deploy" / name).read_text())
        assert config["mlflow"]["tracking_uri"] == f"http://mlflow:{mlflow_port}"
        assert config["server"]["listen"] == f":{container_port('exporter')}"
        subprocess.run([EXPORTER, "check", "--config", str(ROOT / "deploy" / name)], capture_output=True, env=child_env())
    demo = yaml.safe_load((ROOT / "deploy/exporter-demo.yml").read_text())["endpoints"][0]
    assert demo["url"] == f"http://model:{container_port('model')}"
    assert demo["metrics_url"] == "http://traffic:8081/metrics" and "8081" in SERVICES["traffic"]["command"]
    assert SERVICES["seeder"]["command"][-1] == f"http://mlflow:{mlflow_port}"
    assert SERVICES["model"]["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"


def test_the_stack_as_local_processes(tmp_path, processes):
    """MLflow, seeder, model server, traffic, exporter, Prometheus and Alertmanager, each from the
    compose's own command and config files; Prometheus must see every target up and the rules loaded."""
    ports = {name: free_port() for name in ("mlflow", "model", "traffic", "exporter", "prometheus", "alertmanager")}
    hosts = {f"{name}:{port}": f"127.0.0.1:{ports[name]}"
             for name, port in (("mlflow", 5000), ("model", 8080), ("traffic", 8081), ("exporter", 10150),
                                ("alertmanager", 9093))}
    hosts["localhost:9090"] = f"127.0.0.1:{ports['prometheus']}"

    def localize(text: str) -> str:
        for compose_host, local in hosts.items():
            text = text.replace(compose_host, local)
        return text

    def start(args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(args, env=env or child_env(), stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / f"{name}.log", "wb"), cwd=tmp_path)
        processes.append(proc)
        return proc

    mlflow = MlflowServer(tmp_path / "mlflow", port=ports["mlflow"])
    mlflow.workdir.mkdir()
    mlflow.start()
    try:
        seed = [a.replace("http://mlflow:5000", mlflow.url) for a in SERVICES["seeder"]["command"]]
        done = subprocess.run([EXPORTER, *seed], capture_output=True, text=True, env=child_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        model = [localize(a).replace("0.0.0.0", "127.0.0.1").replace("8080", str(ports["model"]))
                 for a in SERVICES["model"]["command"]]
        start([str(BIN / "mlflow"), *model], "model", child_env() | {"MLFLOW_TRACKING_URI": mlflow.url})
        wait_http(f"http://127.0.0.1:{ports['model']}/ping", timeout=120)
        traffic = [localize(a).replace("8081", str(ports["traffic"])) for a in SERVICES["traffic"]["command"]]
        start([EXPORTER, *traffic], "traffic")

        (tmp_path / "exporter.yml").write_text(localize((ROOT / "deploy/exporter-demo.yml").read_text()))
        start([EXPORTER, "serve", "--config", str(tmp_path / "exporter.yml"), "--listen",
               f"127.0.0.1:{ports['exporter']}"], "exporter")

        secrets = tmp_path / "secrets"
        secrets.mkdir()
        for name in COMPOSE["secrets"]:
            (secrets / name).write_text((ROOT / "deploy/secrets.example" / name).read_text())
        (tmp_path / "alertmanager.yml").write_text(
            (ROOT / "alerts/alertmanager.yml").read_text().replace("/run/secrets/", f"{secrets}/"))
        start([tool("prometheus-alertmanager"), f"--config.file={tmp_path / 'alertmanager.yml'}",
               f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
               "--cluster.listen-address="], "alertmanager")

        prom_config = yaml.safe_load(localize((ROOT / "deploy/prometheus.yml").read_text()))
        prom_config["global"] |= {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"}  # the test's, not the shipped
        prom_config["rule_files"] = [str(ROOT / "alerts/rules.yml")]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
        start([tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{ports['prometheus']}"], "prometheus")
        prom = f"http://127.0.0.1:{ports['prometheus']}"
        wait_http(f"{prom}/-/ready", timeout=60)

        deadline = time.monotonic() + 120
        while True:
            targets = requests.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in targets}
            serving = requests.get(f"{prom}/api/v1/query", timeout=5,
                                   params={"query": 'mlops_endpoint_requests_total{endpoint="demo-doubler"}'}).json()
            if set(health.values()) == {"up"} and serving["data"]["result"]:
                break
            assert time.monotonic() < deadline, f"targets not all up: {health}"
            time.sleep(2)
        assert set(health) == {"mlops-kpi-exporter", "prometheus", "alertmanager"}
        groups = requests.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
        alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        shipped = {r["alert"] for g in yaml.safe_load((ROOT / "alerts" / "rules.yml").read_text())["groups"]
                   for r in g["rules"] if "alert" in r}
        assert alerts == shipped and "MLCostSpike" in alerts  # every shipped alert loaded, none else
        managers = requests.get(f"{prom}/api/v1/alertmanagers", timeout=5).json()["data"]["activeAlertmanagers"]
        assert managers and str(ports["alertmanager"]) in managers[0]["url"]
        up = requests.get(f"{prom}/api/v1/query", params={"query": "mlops_endpoint_up"}, timeout=5).json()
        assert up["data"]["result"][0]["value"][1] == "1"  # the model answers the exporter's probe
    finally:
        mlflow.kill()


def test_the_stack_pins_current_releases_to_exact_tags():
    """Prometheus 3, a current Alertmanager and Grafana 12 or later, each on an exact version tag."""
    import re

    images = {name: service["image"] for name, service in SERVICES.items() if "image" in service}
    versions = {}
    for name in ("prometheus", "alertmanager", "grafana"):
        match = re.fullmatch(r"[a-z/]+:v?(\d+)\.(\d+)\.(\d+)", images[name])
        assert match, f"{name}: {images[name]} is not pinned to an exact version"
        versions[name] = tuple(int(part) for part in match.groups())
    assert versions["prometheus"] >= (3, 0, 0) and versions["grafana"] >= (12, 0, 0)
    assert versions["alertmanager"] >= (0, 28, 0)
