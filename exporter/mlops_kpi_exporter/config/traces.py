"""The traces part of the config: GenAI spend (LLM tokens, cost, latency) read from MLflow 3 traces."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from mlops_kpi_exporter.config.common import Duration, DurationBounds, _Strict, at_least

# A price per million tokens above this is a unit or typing mistake (the dearest hosted models cost
# well under 1,000 per million output tokens); it would also overflow the exact integer cost.
MAX_TOKEN_PRICE = 100_000.0

DEFAULT_TRACE_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)  # seconds


class TokenPrice(_Strict):
    """Prices per million tokens, in pricing.currency."""

    input: float = Field(ge=0, le=MAX_TOKEN_PRICE, allow_inf_nan=False)
    output: float = Field(ge=0, le=MAX_TOKEN_PRICE, allow_inf_nan=False)
    # Input tokens served from the provider's prompt cache; unset: the input price (never underpriced).
    cached_input: float | None = Field(None, ge=0, le=MAX_TOKEN_PRICE, allow_inf_nan=False)
    # Input tokens written to the prompt cache (Anthropic); unset: the input price, as MLflow does.
    cache_write: float | None = Field(None, ge=0, le=MAX_TOKEN_PRICE, allow_inf_nan=False)


class TracesConfig(_Strict):
    enabled: bool = True
    poll_interval: Annotated[Duration, AfterValidator(at_least(30))] = 300.0
    resync_interval: Duration = 3600.0
    # auto: aggregate when the server answers its trace metrics API, else incremental.
    # aggregate: the periodic resync checks the books against the server's aggregation per experiment
    #   and recounts only the experiments that differ; incremental: it recounts every experiment.
    mode: Literal["auto", "aggregate", "incremental"] = "auto"
    token_prices: dict[str, TokenPrice] = Field(default_factory=dict)
    use_catalog: bool = True  # the shipped USD token price catalog (used only when pricing.currency is USD)
    max_models: int = Field(10, ge=1, le=1000)  # per experiment; the rest as "other"
    breakdown: Literal["none", "user", "session"] = "none"
    max_breakdown_values: int = Field(20, ge=1, le=500)  # per experiment; the rest as "other"
    duration_buckets: DurationBounds = Field(
        default_factory=lambda: [float(b) for b in DEFAULT_TRACE_BUCKETS], min_length=1, max_length=30
    )

    @field_validator("token_prices")
    @classmethod
    def _names(cls, value: dict[str, TokenPrice]) -> dict[str, TokenPrice]:
        lowered: dict[str, str] = {}
        for name in value:
            if not name.strip():
                raise ValueError("a model name must not be empty")
            if name.lower() in lowered:
                raise ValueError(f"{lowered[name.lower()]!r} and {name!r} differ only in case: models match "
                                 "case-insensitively, keep one")
            lowered[name.lower()] = name
        return value

    @model_validator(mode="after")
    def _resync_after_poll(self) -> TracesConfig:
        if self.resync_interval < self.poll_interval:
            raise ValueError("resync_interval must not be shorter than poll_interval")
        return self
