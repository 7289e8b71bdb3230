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
        """Twice its input's first column: a model small enough to serve anywhere (the demo's endpoint).
        A negative input makes it raise (MLflow's scoring server answers 400), one of SLOW or more makes
        it think that many milliseconds (past the demo server's timeout: 504)."""

        def predict(self, context, model_input, params=None):
            import time

            values = [float(x) for x in model_input.iloc[:, 0]]
            if any(v < 0 for v in values):
                raise ValueError("the demo model doubles non-negative numbers only")
            slowest = max(values, default=0.0)
            if slowest >= SLOW:
                time.sleep(slowest / 1000)
            return [2 * v for v in values]


SLOW = 1000.0
