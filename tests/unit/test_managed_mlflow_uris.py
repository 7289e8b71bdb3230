"""Managed MLflow as tracking URIs: the forms the config takes (SageMaker's ARNs, Azure ML, Databricks, any
plugin's scheme), the extra a missing plugin is named by, and which stores a source may read beside.

Whether a plugin is installed is MLflow's entry points: here `extras.plugin_schemes` is replaced, so the
tests say the same whatever this machine has installed. tests/integration/test_managed_mlflow.py reads a
real server through a real plugin.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mlops_kpi_exporter import extras
from mlops_kpi_exporter.cli import main, prepare
from mlops_kpi_exporter.config import ConfigError, config_from_dict
from mlops_kpi_exporter.mlflow_client import MlflowConnection, reads_mlflow_rest

TRACKING_SERVER = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/team-mlflow"
MLFLOW_APP = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-app/app-abc123def456"
AZURE = ("azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/0000-1111/resourceGroups/ml/providers/"
         "Microsoft.MachineLearningServices/workspaces/team")


def config(uri: str, **sections):
    return config_from_dict({"mlflow": {"tracking_uri": uri}, **sections})


@pytest.fixture
def no_plugins(monkeypatch):
    monkeypatch.setattr(extras, "plugin_schemes", lambda: set())


@pytest.mark.parametrize("uri", [
    "databricks", "databricks://team-profile", TRACKING_SERVER, MLFLOW_APP,
    "arn:aws-us-gov:sagemaker:us-gov-west-1:123456789012:mlflow-tracking-server/gov", AZURE,
    "signed+http://127.0.0.1:5000", "http://127.0.0.1:5000", "sqlite:///mlflow.db", "/srv/mlruns",
])
def test_the_forms_of_managed_mlflow_are_accepted(uri):
    assert config(uri).mlflow.tracking_uri == uri


@pytest.mark.parametrize("uri, words", [
    ("arn:aws:sagemaker:us-east-1:1234:mlflow-tracking-server/x", "is not the ARN of a SageMaker MLflow tracking server"),
    ("arn:aws:sagemaker:us-east-1:123456789012:training-job/x", "mlflow-tracking-server/NAME, or ...:mlflow-app/ID"),
    ("arn:aws:s3:::my-bucket", "is not the ARN of a SageMaker MLflow"),
    ("databricks-uc", "Unity Catalog model registry, not a tracking store: use databricks"),
    ("databricks://", "names no profile"),
    ("azureml://", "has no host"),
    ("signed+http://bob:hunter2@127.0.0.1:5000", "credentials may not be written in the URI"),
    ("databricks://bob:hunter2@workspace", "credentials may not be written in the URI"),
])
def test_a_malformed_managed_uri_is_refused_at_load(uri, words):
    with pytest.raises(ConfigError) as err:
        config(uri)
    assert "mlflow.tracking_uri: " in str(err.value) and words in str(err.value), err.value
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("uri, extra, plugin", [(TRACKING_SERVER, "sagemaker", "sagemaker-mlflow"),
                                                (MLFLOW_APP, "sagemaker", "sagemaker-mlflow"),
                                                (AZURE, "azureml", "azureml-mlflow")])
def test_a_managed_mlflow_without_its_plugin_names_the_extra(no_plugins, uri, extra, plugin):
    with pytest.raises(ConfigError) as err:
        MlflowConnection.from_config(config(uri))
    assert str(err.value) == (f"mlflow.tracking_uri: {uri} needs the {plugin} plugin, which the runtime install "
                              f"leaves out: pip install 'mlops-kpi-exporter[{extra}]'")


def test_a_scheme_nothing_reads_is_a_config_error(no_plugins):
    with pytest.raises(ConfigError, match="mlflow.tracking_uri: signed\\+http://127.0.0.1:5000: no MLflow tracking store "
                                          "reads the scheme 'signed\\+http'.*entry point group mlflow.tracking_store"):
        MlflowConnection.from_config(config("signed+http://127.0.0.1:5000"))


def test_with_the_plugin_installed_the_uri_is_accepted(monkeypatch):
    monkeypatch.setattr(extras, "plugin_schemes", lambda: {"arn", "azureml"})
    for uri in (TRACKING_SERVER, AZURE):
        assert MlflowConnection.from_config(config(uri)).tracking_uri == uri
    for uri in ("databricks", "databricks://team-profile", "http://127.0.0.1:1"):  # MLflow's own: no plugin asked
        monkeypatch.setattr(extras, "plugin_schemes", lambda: pytest.fail("a plugin was looked for"))
        assert MlflowConnection.from_config(config(uri)).tracking_uri == uri


def test_check_names_the_extra(no_plugins, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(f"mlflow:\n  tracking_uri: {TRACKING_SERVER}\n")
    assert main(["check", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (f"config error:\nmlflow.tracking_uri: {TRACKING_SERVER} needs the sagemaker-mlflow "
                                       "plugin, which the runtime install leaves out: "
                                       "pip install 'mlops-kpi-exporter[sagemaker]'\n")


def test_the_process_tracking_uri_is_the_configured_one(monkeypatch):
    """SageMaker's signer and routing header read MLflow's process tracking URI, not their store's."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://inherited.example:5000")  # restored after the test
    monkeypatch.setattr(extras, "plugin_schemes", lambda: {"arn"})
    MlflowConnection.from_config(config(TRACKING_SERVER)).apply()
    import os

    assert os.environ["MLFLOW_TRACKING_URI"] == TRACKING_SERVER


def test_the_gateway_source_runs_through_a_plugin_and_true_is_refused(monkeypatch):
    monkeypatch.setattr(extras, "plugin_schemes", lambda: {"arn", "signed+http"})
    for uri in (TRACKING_SERVER, "databricks", "signed+http://127.0.0.1:1"):
        assert config(uri).reads_gateway  # auto: the source says once that it has nothing to read
        assert "gateway" in [s.name for s in prepare(config(uri))[1]]
        with pytest.raises(ConfigError, match="gateway.enabled is true, but mlflow.tracking_uri is read through an "
                                              "MLflow plugin"):
            config(uri, gateway={"enabled": True})
    assert not config("sqlite:///mlflow.db").reads_gateway and not config("/srv/mlruns").reads_gateway


def test_only_mlflows_own_rest_store_on_http_is_read_beside():
    from mlflow.store.tracking.rest_store import RestStore

    class PluginStore(RestStore):
        pass

    on = lambda uri: SimpleNamespace(tracking_uri=uri)  # noqa: E731 - the client, as far as the check looks
    assert reads_mlflow_rest(on("https://mlflow.example"), RestStore(lambda: None))
    assert not reads_mlflow_rest(on("https://mlflow.example"), PluginStore(lambda: None))  # a plugin over https
    assert not reads_mlflow_rest(on("signed+http://127.0.0.1:1"), RestStore(lambda: None))
    assert not reads_mlflow_rest(on("databricks"), PluginStore(lambda: None))
    assert not reads_mlflow_rest(SimpleNamespace(), SimpleNamespace())  # a local store: the client is not asked
