"""The gateway part of the config: the budget policies of MLflow's AI Gateway, read from the tracking server."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from mlops_kpi_exporter.config.common import Duration, _Strict, at_least

GatewayEnabled = Literal["auto", "true", "false"]


class GatewayConfig(_Strict):
    # auto: read when mlflow.tracking_uri is an http(s) server (a local store holds no gateway spend; through
    # an MLflow plugin there is no gateway API to read, which the source says once);
    # a server without the gateway API, or that refuses the read, is noted in the log, never a failed poll.
    # true: the same, but a refused read fails the poll. false: never read.
    enabled: GatewayEnabled = "auto"
    poll_interval: Annotated[Duration, AfterValidator(at_least(10, "two requests a poll; spend moves per call"))] = 60.0
    max_policies: int = Field(100, ge=1, le=5000)  # policies shown, the nearest their limit first; the rest counted

    @field_validator("enabled", mode="before")
    @classmethod
    def _tri_state(cls, value: Any) -> Any:
        # YAML reads `true`/`false` as booleans and `auto` as text: one spelling for all three, one error
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str) and value.strip().lower() in ("auto", "true", "false"):
            return value.strip().lower()
        raise ValueError(f"must be auto, true or false, got {value!r}")
