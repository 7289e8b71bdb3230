"""mlflow.tracking_uri: the forms it takes, checked as the config loads (README "Managed MLflow").

A tracking server (`http(s)://HOST`), a local store (`sqlite:///...`, a database URI, a path),
Databricks (`databricks`, `databricks://PROFILE`), SageMaker's managed MLflow (the ARN of a tracking
server or of an MLflow App), Azure ML (`azureml://...`), or any scheme an MLflow plugin reads. Whether
the plugin a URI needs is installed is asked when the connection is made (mlflow_client.py,
extras.require_store), not here: a config file is valid or not whatever is installed.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from mlops_kpi_exporter import extras
from mlops_kpi_exporter.config.common import redact_uri

# arn:PARTITION:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME or ...:mlflow-app/ID: AWS's own
# pattern, less a name holding ':' or '/', which the plugin's parse of the ARN would cut
SAGEMAKER_ARN = re.compile(r"arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:(mlflow-tracking-server|mlflow-app)/[^\s/:]+")
ARN_FORMS = "arn:aws:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME, or ...:mlflow-app/ID"


def check_tracking_uri(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    scheme = extras.tracking_scheme(value)
    if scheme == "arn":
        if not SAGEMAKER_ARN.fullmatch(value):
            raise ValueError(f"{value!r} is not the ARN of a SageMaker MLflow tracking server or MLflow App ({ARN_FORMS})")
        return value
    if scheme in ("databricks-uc", "uc"):
        raise ValueError(f"{value!r} is Databricks' Unity Catalog model registry, not a tracking store: use databricks "
                         "or databricks://PROFILE (MLflow then reads the registry from Unity Catalog itself)")
    if extras.is_local_store(value):
        return value
    parts = urlsplit(value)
    if scheme in ("http", "https", "azureml") and not parts.hostname:
        raise ValueError(f"{redact_uri(value)!r} has no host")
    if scheme == "databricks" and value != "databricks" and not parts.netloc:
        raise ValueError(f"{value!r} names no profile: use databricks, or databricks://PROFILE")
    if "@" in parts.netloc:  # a plugin's own credentials come from its environment, never the file
        raise ValueError("credentials may not be written in the URI; use mlflow.auth")
    return value
