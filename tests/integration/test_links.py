"""Every link the alerts and dashboards ship is followed: runbooks against a real exporter process,
Grafana links against the committed dashboards (no Grafana here)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml
from conftest import EXPORTER, child_env, free_port, wait_http
from mlops_kpi_exporter.server import BasicAuth, ExporterApp, start_http_server
from mlops_kpi_exporter.snapshot import SnapshotStore
from prometheus_client.registry import CollectorRegistry

ROOT = Path(__file__).parents[2]
OPS = yaml.safe_load((ROOT / "deploy" / "monitoring.yml").read_text())
EXPORTER_URL, GRAFANA_URL = OPS["exporter_url"], OPS["grafana_url"]
BOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "dashboards" / "json").glob("*.json"))}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((ROOT / "alerts" / "rules.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def urls_in(node) -> list[str]:
    """Every "url" value of a dashboard, at any depth."""
    if isinstance(node, dict):
        return [u for k, v in node.items() for u in ([v] if k == "url" and isinstance(v, str) else urls_in(v))]
    if isinstance(node, list):
        return [u for item in node for u in urls_in(item)]
    return []


def shipped_links() -> list[tuple[str, str]]:
    """(where, url) of every link in alerts/rules.yml and dashboards/json."""
    links = [(f"alert {r['alert']} {key}", r["annotations"][key]) for r in alert_rules()
             for key in ("runbook_url", "dashboard_url")]
    return links + [(f"dashboard {uid}", url) for uid, board in BOARDS.items() for url in urls_in(board)]


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    """`mlops-kpi-exporter demo`, as `make demo` runs it, on a free port."""
    work = tmp_path_factory.mktemp("links")
    url = f"http://127.0.0.1:{free_port()}"
    with open(work / "exporter.log", "wb") as log:  # the child keeps its own copy of the file
        proc = subprocess.Popen([EXPORTER, "demo", "--listen", url.removeprefix("http://"), "--data-dir",
                                 str(work / "demo")], env=child_env(), stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_http(f"{url}/healthz", timeout=120, proc=proc)  # the first start seeds the demo store
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_shipped_link_works(exporter):
    followed = 0
    for where, url in shipped_links():
        if "${" in url:
            # Grafana data links fill ${...} at click time; the only ones shipped open a run in MLflow,
            # which is the user's own server (the mlflow_url variable), not something to follow here.
            assert url.startswith("${mlflow_url}/"), f"{where}: unexpected templated link {url}"
            continue
        if url.startswith(f"{GRAFANA_URL}/d/"):
            # No Grafana on this machine: the dashboard uid must be one that dashboards/json provisions.
            uid = re.split(r"[/?#]", url.removeprefix(f"{GRAFANA_URL}/d/"))[0]
            assert uid in BOARDS, f"{where}: no dashboard with uid {uid!r} ({url})"
            continue
        assert url.startswith(f"{EXPORTER_URL}/"), f"{where}: links only to the exporter or Grafana, not {url}"
        page, _, anchor = url.replace(EXPORTER_URL, exporter, 1).partition("#")
        reply = requests.get(page, timeout=10)
        assert reply.status_code == 200, f"{where}: {url} answered {reply.status_code}"
        if anchor:
            assert f'id="{anchor}"' in reply.text, f"{where}: {url} has no anchor #{anchor}"
        followed += 1
    assert followed >= len(alert_rules()) + len(BOARDS)  # every runbook link and every dashboard's runbooks link


def test_every_alert_has_a_runbook_on_the_served_page(exporter):
    reply = requests.get(f"{exporter}/runbooks", timeout=10)
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "text/html; charset=utf-8"
    missing = [r["alert"] for r in alert_rules() if f'id="{r["alert"].lower()}"' not in reply.text]
    assert missing == [], "alerts without a runbook on /runbooks"
    assert "<script" not in reply.text and "src=" not in reply.text  # self-contained: nothing fetched, nothing run
    assert "<strong>Confirm</strong>" in reply.text and "<code>mlops_run_cost</code>" in reply.text
    head = requests.head(f"{exporter}/runbooks", timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert 'href="/runbooks"' in requests.get(f"{exporter}/", timeout=10).text  # linked from the landing page


def test_one_settings_file_drives_rules_and_dashboards(tmp_path):
    """deploy/monitoring.yml is read by both generators: the job, the datasource and the links change together."""
    import subprocess
    import sys

    ops = OPS | {"job": "ml-prod", "datasource_uid": "team-prom", "exporter_url": "https://ml-exporter.example"}
    (tmp_path / "ops.yml").write_text(yaml.safe_dump(ops))
    subprocess.run([sys.executable, str(ROOT / "alerts" / "generate.py"), "--ops", str(tmp_path / "ops.yml"),
                    "--out", str(tmp_path / "rules.yml")], check=True)
    subprocess.run([sys.executable, str(ROOT / "dashboards" / "build.py"), "--ops", str(tmp_path / "ops.yml"),
                    "--out", str(tmp_path / "json")], check=True)
    rules = (tmp_path / "rules.yml").read_text()
    assert 'up{job="ml-prod"}' in rules and "https://ml-exporter.example/runbooks#mlcostspike" in rules
    boards = "".join(p.read_text() for p in (tmp_path / "json").glob("*.json"))
    assert "https://ml-exporter.example/runbooks" in boards
    assert "mlops-prometheus" not in boards and "team-prom" not in boards  # the datasource is a variable
    assert "label_values(mlops_exporter_info, job)" in boards


def test_runbooks_are_open_when_basic_auth_guards_the_rest():
    """Whoever follows a link from Slack or the pager has no scrape credentials; the runbooks hold no secrets."""
    auth = BasicAuth({"prometheus": bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(4)).decode()})
    app = ExporterApp(CollectorRegistry(), SnapshotStore(), "test", {}, auth)
    port = free_port()
    server, _ = start_http_server(app, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    try:
        page = requests.get(f"{url}/runbooks", timeout=10)
        assert page.status_code == 200 and 'id="mlcostspike"' in page.text
        assert requests.get(f"{url}/metrics", timeout=10).status_code == 401
        assert requests.get(f"{url}/", timeout=10).status_code == 401
        assert requests.get(f"{url}/metrics", auth=("prometheus", "s3cret-pass"), timeout=10).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
