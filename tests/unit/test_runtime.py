"""The lean runtime: what runs with the runtime install alone (MLflow's client package, mlflow-skinny), and
what says which extra it needs.

The test venv has the full MLflow, so each check runs in a child interpreter from which the packages
that mlflow-skinny does not bring are taken away (imports fail, `find_spec` finds nothing, as in a
runtime-only venv). bench/bench_runtime.py does the same for real, in a venv with the runtime only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
# What the full MLflow brings and mlflow-skinny does not (its server, SQL store, data stack).
NOT_IN_SKINNY = ("numpy", "pandas", "pyarrow", "sqlalchemy", "alembic", "sklearn", "scipy", "flask", "matplotlib",
                 "graphene", "gunicorn")
HEAVY = ("mlflow", "numpy", "pandas", "pyarrow", "sqlalchemy", "scipy", "sklearn")

WITHOUT = """
import importlib.util, sys
GONE = set({gone!r})
class Gone:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in GONE:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Gone())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in GONE else _find_spec(name, package)
"""


def child(code: str, gone: tuple[str, ...] = NOT_IN_SKINNY, *args: str) -> subprocess.CompletedProcess:
    script = WITHOUT.format(gone=gone) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_every_module_imports_with_the_runtime_only_but_the_demo_model():
    proc = child("""
        import importlib, pkgutil, mlops_kpi_exporter
        for m in pkgutil.walk_packages(mlops_kpi_exporter.__path__, "mlops_kpi_exporter."):
            if m.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(m.name)
            except Exception as exc:
                print(f"{m.name}: {type(exc).__name__}: {exc}")
        print("imported", sorted(k for k in sys.modules if k.split(".")[0] in GONE))
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "imported []"
    assert lines[:-1] == ["mlops_kpi_exporter.demo_model: MissingExtra: the demo's model (mlflow.pyfunc) needs numpy, "
                          "pandas, which the runtime install leaves out: pip install 'mlops-kpi-exporter[local]'"]


def test_the_command_line_and_the_config_load_nothing_heavy():
    """`--help`, `estimate`, config errors and `demo --print-config` must not pay for importing MLflow."""
    proc = child("""
        import mlops_kpi_exporter.cli, mlops_kpi_exporter.config, mlops_kpi_exporter.extras
        from mlops_kpi_exporter.cli import main
        assert main(["demo", "--print-config", "--data-dir", "/nonexistent-demo"]) == 0
        assert main(["estimate", "--instance", "m5.xlarge", "--hours", "1"]) == 0
        print("loaded", sorted({k.split(".")[0] for k in sys.modules} & set(sys.argv[1:])))
    """, (), *HEAVY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "loaded []"
    assert not Path("/nonexistent-demo").exists()  # printing the demo's config makes no store


def test_the_demo_and_seed_name_the_local_extra():
    proc = child("""
        from mlops_kpi_exporter.cli import main
        print(main(["demo", "--data-dir", sys.argv[1]]), main(["seed", "--tracking-uri", "http://127.0.0.1:9"]))
    """, NOT_IN_SKINNY, str(ROOT / "build" / "no-demo-here"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "2"]
    errors = proc.stderr.strip().splitlines()
    assert errors[0].startswith("error: the demo (a local MLflow store, and a Parquet bill) needs ")
    assert errors[1].startswith("error: seeding a tracking server with a servable model needs numpy, pandas")
    assert all(line.endswith("pip install 'mlops-kpi-exporter[local]'") for line in errors)
    assert not (ROOT / "build" / "no-demo-here").exists()


@pytest.mark.parametrize("uri, refused", [
    ("sqlite:////tmp/mlflow.db", True), ("postgresql+psycopg2://user:s3cret@db/mlflow", True), ("mysql://db/mlflow", True),
    ("http://127.0.0.1:5000", False), ("https://mlflow.example.com", False), ("file:///tmp/mlruns", False),
    ("databricks", False),
])
def test_a_local_store_without_the_extra_is_a_config_error_naming_it(uri, refused):
    proc = child("""
        from mlops_kpi_exporter.config import ConfigError, config_from_dict
        from mlops_kpi_exporter.mlflow_client import MlflowConnection
        try:
            MlflowConnection.from_config(config_from_dict({"mlflow": {"tracking_uri": sys.argv[1]}}))
            print("accepted")
        except ConfigError as exc:
            print(exc)
    """, NOT_IN_SKINNY, uri)
    assert proc.returncode == 0, proc.stderr
    if refused:
        assert "s3cret" not in proc.stdout
        uri = uri.replace("user:s3cret@", "")  # redacted
        assert proc.stdout.strip() == (f"mlflow.tracking_uri: reading the local MLflow store {uri} needs sqlalchemy, "
                                       "alembic, which the runtime install leaves out: pip install 'mlops-kpi-exporter[local]'")
    else:
        assert proc.stdout.strip() == "accepted"


def test_a_local_store_with_the_extra_is_accepted():
    from mlops_kpi_exporter.config import config_from_dict
    from mlops_kpi_exporter.config.secrets import Credentials
    from mlops_kpi_exporter.mlflow_client import MlflowConnection

    connection = MlflowConnection.from_config(config_from_dict({"mlflow": {"tracking_uri": "sqlite:////tmp/mlflow.db"}}))
    # The store as given, the default 30 s timeout, no secrets, no CA bundle: nothing refused or rewritten.
    assert connection == MlflowConnection("sqlite:////tmp/mlflow.db", 30.0, Credentials(), None)


def test_a_parquet_bill_without_duckdb_names_the_parquet_extra(tmp_path):
    (tmp_path / "bill.parquet").write_bytes(b"PAR1")
    (tmp_path / "config.yml").write_text(
        f"mlflow: {{tracking_uri: 'http://127.0.0.1:9'}}\nbilling: {{sources: [{{name: gcp, focus: '{tmp_path}'}}]}}\n")
    proc = child("""
        from mlops_kpi_exporter.config import load_config
        from mlops_kpi_exporter.sources.billing import bill_sources
        source = bill_sources(load_config(sys.argv[1]), export=True)[0]
        for attempt in (source.check, source.poll):
            try:
                attempt()
            except ImportError as exc:
                print(f"{type(exc).__name__}: {exc}")
    """, ("duckdb",), str(tmp_path / "config.yml"))
    assert proc.returncode == 0, proc.stderr
    expected = (f"MissingExtra: {tmp_path / 'bill.parquet'}: reading a Parquet FOCUS export needs duckdb, which the "
                "runtime install leaves out: pip install 'mlops-kpi-exporter[parquet]'")
    assert proc.stdout.splitlines() == [expected, expected]
