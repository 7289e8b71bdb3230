"""A tracking plugin for the tests, made like managed MLflow's: the URI scheme `signed+http://HOST:PORT`,
whose tracking store and model registry store sign every request they send with a test key (an HMAC of
the request's method and target in the X-Test-Signature header), as SageMaker's sign with SigV4: through
MLflow's request auth providers, which the stores' host credentials name.

The stores sign only their own calls: host credentials asked for outside a store method carry no
signature, as a plugin's authentication does not reach a request made beside its store. So a source
that read MLflow's REST API itself, beside the store, would be refused by tests/signed_mlflow.py's
proxy, which is how the tests tell that every read went through the plugin.

Nothing here is installed with pip: tests/signed_mlflow.py puts this folder on sys.path (and on
PYTHONPATH for child processes) beside a dist-info that declares the entry points below.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from functools import partial

import requests
from mlflow.store.model_registry.rest_store import RestStore as RegistryRestStore
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider
from mlflow.utils.credentials import get_default_host_creds

SCHEME = "signed+http"
HEADER = "X-Test-Signature"
KEY = b"signed-mlflow-store-test-key"  # a test key: nothing real is signed with it
AUTH_NAME = "signed-mlflow-test"
ENTRY_POINTS = f"""\
[mlflow.tracking_store]
{SCHEME} = signed_mlflow_store:SignedTrackingStore

[mlflow.model_registry_store]
{SCHEME} = signed_mlflow_store:SignedRegistryStore

[mlflow.request_auth_provider]
{AUTH_NAME} = signed_mlflow_store:SigningAuthProvider
"""

_in_store_call = contextvars.ContextVar("signed_mlflow_store_call", default=False)


def signature(method: str, target: str) -> str:
    """The signature of a request: `target` is its path and query string, as on the request line."""
    return hmac.new(KEY, f"{method.upper()} {target}".encode(), hashlib.sha256).hexdigest()


class _Sign(requests.auth.AuthBase):
    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[HEADER] = signature(request.method or "", request.path_url)
        return request


class SigningAuthProvider(RequestAuthProvider):
    def get_name(self) -> str:
        return AUTH_NAME

    def get_auth(self) -> requests.auth.AuthBase:
        return _Sign()


def server_url(store_uri: str) -> str:
    return "http" + store_uri[len(SCHEME):]


def _host_creds(store_uri: str):
    creds = get_default_host_creds(server_url(store_uri))  # MLflow's settings: timeout, CA file, token
    if _in_store_call.get():
        creds.auth = AUTH_NAME
    return creds


class _SignsItsCalls:
    def _call_endpoint(self, *args, **kwargs):
        marked = _in_store_call.set(True)
        try:
            return super()._call_endpoint(*args, **kwargs)
        finally:
            _in_store_call.reset(marked)


class SignedTrackingStore(_SignsItsCalls, RestStore):
    def __init__(self, store_uri: str, artifact_uri: str | None = None):
        super().__init__(partial(_host_creds, store_uri))


class SignedRegistryStore(_SignsItsCalls, RegistryRestStore):
    def __init__(self, store_uri: str, tracking_uri: str | None = None):
        super().__init__(partial(_host_creds, store_uri))
