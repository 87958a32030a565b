"""``http.writes`` of the gateway file (config only; the endpoint is ``edge_daq.writes.http``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from edge_daq.config.types import ConfigPath, StrictModel


class HttpWritesConfig(StrictModel):
    enabled: bool = False
    token_file: ConfigPath | None = Field(default=None, description="the bearer token, one line")

    @model_validator(mode="after")
    def _token(self) -> HttpWritesConfig:
        if self.enabled and self.token_file is None:
            raise ValueError("writing over HTTP needs token_file: a file holding the bearer token")
        return self
