"""The demo's servable model, apart from demo.py: mlflow.pyfunc needs numpy and pandas, which only the
`local` extra (the full MLflow) installs, and the model server unpickles the class from here."""

from __future__ import annotations

import warnings

from mlops_kpi_exporter import extras

extras.require("local", "the demo's model (mlflow.pyfunc)", extras.MODEL_LOGGING)

import mlflow.pyfunc  # noqa: E402 - after the check, which names the extra to install

with warnings.catch_warnings():  # mlflow advises type hints on predict() when the class is made
    warnings.simplefilter("ignore")

    class Doubler(mlflow.pyfunc.PythonModel):
        """Twice its input's first column: a model small enough to serve anywhere (the demo's endpoint)."""

        def predict(self, context, model_input, params=None):
            return [2 * float(x) for x in model_input.iloc[:, 0]]
