"""One way to reach AWS (S3 exports, Cost Explorer): boto3 with the usual credential chain.

boto3 is an optional extra (`pip install 'mlops-kpi-exporter[aws]'`, in the container image): a
config that needs it without it installed is a config error, said at start.
"""

from __future__ import annotations

from mlops_kpi_exporter.config import ConfigError
from mlops_kpi_exporter.config.billing import AwsAccess
from mlops_kpi_exporter.config.common import redact_uri


def client(service: str, access: AwsAccess | None, what: str):
    """A boto3 client for `service` ("s3", "ce"); `what` names the config entry in errors."""
    try:
        import boto3
        from botocore.config import Config as BotoConfig
    except ImportError:
        raise ConfigError(f"{what} needs boto3: pip install 'mlops-kpi-exporter[aws]'") from None
    access = access or AwsAccess()
    try:
        session = boto3.Session(profile_name=access.profile) if access.profile else boto3.Session()
    except Exception as exc:  # botocore's ProfileNotFound and friends
        raise ConfigError(f"{what}: {type(exc).__name__}: {exc}") from None
    settings = BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return session.client(service, region_name=access.region, endpoint_url=access.endpoint_url, config=settings)


def describe_error(exc: Exception) -> str:
    """An AWS error in a line, with no request signature, credential or presigned URL in it."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', type(exc).__name__)}: {str(error.get('Message', ''))[:200]}"
    text = str(exc)
    if "://" in text:
        text = " ".join(redact_uri(word) if "://" in word else word for word in text.split())
    return f"{type(exc).__name__}: {text[:200]}"
