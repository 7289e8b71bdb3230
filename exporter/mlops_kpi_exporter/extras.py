"""What the runtime install leaves out, and the one message that names the extra to add.

The runtime (`pip install mlops-kpi-exporter`) reads an MLflow tracking server through MLflow's client
package, mlflow-skinny. The rest comes with extras:

- `local`: the full MLflow, whose SQL store (SQLAlchemy, Alembic) reads a local `sqlite:///` store (or
  a database URI) directly, and what the demo writes with (a pyfunc model, a Parquet bill);
- `parquet`: pyarrow, to read FOCUS bills exported as Parquet;
- `aws`: boto3, for bills on S3 and AWS Cost Explorer (sources/aws.py says so itself).

The checks import nothing: they only ask whether a module can be found, so that a command that does
not need an extra never pays for it, and one that does says so before it starts.
"""

from __future__ import annotations

import importlib.util
import sys

PACKAGE = "mlops-kpi-exporter"
SQL_STORE = ("sqlalchemy", "alembic")  # what MLflow's SQL store imports beyond the client
DEMO = (*SQL_STORE, "pyarrow")  # the demo also writes its Google bill as Parquet
MODEL_LOGGING = ("numpy", "pandas")  # mlflow.pyfunc: the `seed` command logs a servable model
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQL store engines


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
