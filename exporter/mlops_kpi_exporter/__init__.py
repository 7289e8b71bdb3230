"""mlops-kpi-exporter: MLflow runs and model-serving endpoints as cost, health and KPI metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlops-kpi-exporter")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
