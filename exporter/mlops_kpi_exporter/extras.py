"""What the runtime install leaves out, and the one message that names the extra to add.

The runtime (`pip install mlops-kpi-exporter`) reads an MLflow tracking server through MLflow's client
package, mlflow-skinny. The rest comes with extras:

- `local`: the full MLflow, whose SQL store (SQLAlchemy, Alembic) reads a local `sqlite:///` store (or
  a database URI) directly, and what the demo writes with (a pyfunc model, a Parquet bill);
- `parquet` (or `bills`): DuckDB, to read FOCUS bills exported as Parquet (and any bill in columns);
- `aws`: boto3, for bills on S3 and AWS Cost Explorer (sources/aws.py says so itself);
- `sagemaker`: the sagemaker-mlflow plugin, for SageMaker's managed MLflow (tracking servers and MLflow
  Apps: `arn:aws:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME` or `...:mlflow-app/ID`), which
  signs every request with SigV4 from the AWS credential chain;
- `azureml`: the azureml-mlflow plugin, for Azure Machine Learning (`azureml://...`, Azure identity).

Databricks (`databricks`, `databricks://PROFILE`) needs no extra: MLflow's client reads it itself,
through the Databricks SDK that mlflow-skinny brings. Any other scheme is read when an MLflow plugin
declares a tracking store for it (the entry point group `mlflow.tracking_store`); `require_store` says
which extra or plugin a tracking URI lacks.

The checks import nothing: they only ask whether a module (or a plugin's entry point) can be found, so
that a command that does not need an extra never pays for it, and one that does says so before it starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from urllib.parse import urlsplit

PACKAGE = "mlops-kpi-exporter"
SQL_STORE = ("sqlalchemy", "alembic")  # what MLflow's SQL store imports beyond the client
DEMO = (*SQL_STORE, "pyarrow")  # the demo also writes its Google bill as Parquet
MODEL_LOGGING = ("numpy", "pandas")  # mlflow.pyfunc: the `seed` command logs a servable model
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQL store engines
# The tracking stores MLflow's client has of its own (besides the SQL store): a path or file: URI, a
# tracking server, Databricks (and its Unity Catalog names)
MLFLOW_SCHEMES = ("", "file", "http", "https", "databricks", "databricks-uc", "uc")
# Managed MLflow whose tracking store is an MLflow plugin: its URI scheme -> (the extra, the plugin)
MANAGED_PLUGINS = {"arn": ("sagemaker", "sagemaker-mlflow"), "azureml": ("azureml", "azureml-mlflow")}
TRACKING_STORE_PLUGINS = "mlflow.tracking_store"  # the entry point group a plugin declares its store in


class NoStorePlugin(ImportError):
    """No MLflow tracking store, of MLflow's own or of an installed plugin, reads a tracking URI's scheme."""


class MissingExtra(ImportError):
    """A command, a module or a source needs a part of MLflow (or pyarrow) that this install does not have."""

    def __init__(self, purpose: str, extra: str, missing: list[str]):
        self.extra, self.missing = extra, missing
        super().__init__(f"{purpose} needs {', '.join(missing)}, which the runtime install leaves out: "
                         f"pip install '{PACKAGE}[{extra}]'")


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of `modules` that cannot be imported here (found only, not imported)."""
    absent = []
    for name in modules:
        if name in sys.modules:
            if sys.modules[name] is None:  # blocked on purpose (how the tests take a package away)
                absent.append(name)
            continue
        try:
            if importlib.util.find_spec(name) is None:
                absent.append(name)
        except (ImportError, ValueError):
            absent.append(name)
    return absent


def require(extra: str, purpose: str, modules: tuple[str, ...]) -> None:
    """Raise MissingExtra, naming the extra, when any of `modules` is not installed."""
    lacking = missing(modules)
    if lacking:
        raise MissingExtra(purpose, extra, lacking)


def is_database_uri(uri: str) -> bool:
    """A tracking URI that MLflow reads in-process through its SQL store (sqlite:///..., postgresql://...)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.split("+", 1)[0].lower() in DATABASE_SCHEMES


def tracking_scheme(uri: str) -> str:
    """The scheme MLflow picks a tracking store by: `databricks` for databricks and databricks://PROFILE,
    a database URI's engine (postgresql+psycopg2 is postgresql), "" for a path (C:\\ too)."""
    if uri in ("databricks", "databricks-uc", "uc"):  # a name, not a URI: MLflow takes it whole
        return uri
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError:
        return ""
    scheme = scheme.split("+", 1)[0] if scheme.split("+", 1)[0] in DATABASE_SCHEMES else scheme
    return "" if len(scheme) == 1 else scheme


def is_tracking_server(uri: str) -> bool:
    """A plain http(s) tracking server: MLflow's own REST client reads it, no plugin."""
    return tracking_scheme(uri) in ("http", "https")


def is_local_store(uri: str) -> bool:
    """A store read in-process (a database, a path): no server, so no gateway and no plugin."""
    return is_database_uri(uri) or tracking_scheme(uri) in ("", "file")


def plugin_schemes() -> set[str]:
    """The URI schemes the installed MLflow plugins declare a tracking store for (nothing is imported)."""
    return {entry.name.lower() for entry in importlib.metadata.entry_points(group=TRACKING_STORE_PLUGINS)}


def require_store(uri: str, shown: str) -> None:
    """Raise MissingExtra (naming the extra) when a managed MLflow's plugin is not installed, NoStorePlugin
    when nothing reads the URI's scheme. `shown` is the URI as it may be printed (redacted)."""
    scheme = tracking_scheme(uri)
    if scheme in MLFLOW_SCHEMES or scheme in DATABASE_SCHEMES or scheme in plugin_schemes():
        return
    if scheme in MANAGED_PLUGINS:
        extra, plugin = MANAGED_PLUGINS[scheme]
        raise MissingExtra(shown, extra, [f"the {plugin} plugin"])
    raise NoStorePlugin(f"{shown}: no MLflow tracking store reads the scheme {scheme!r}, neither MLflow's own nor an "
                        f"installed plugin's (a plugin declares it in the entry point group {TRACKING_STORE_PLUGINS}): "
                        "install the MLflow plugin that provides it")
